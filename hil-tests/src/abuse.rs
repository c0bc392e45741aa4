//! The `attacks` scenario, its abuse part, against the real 3-node rig: a user certificate
//! knocking on every node's peer port, a pod planting a symlink for a `subPath` escape next to
//! a root image under `runAsNonRoot`, patch bombs through kubectl from the LAN host, and the
//! mode of every file of a node's data dir.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::rig::Rig;
use crate::scenarios::Measured;
use crate::services::{Kubectl, Scratch};
use crate::shoal;
use crate::{Error, Result};

fn failed(reason: impl Into<String>) -> Error {
    Error::ScenarioFailed { scenario: "attacks".into(), reason: reason.into() }
}

/// The `client-certificate-data` or `client-key-data` of a kubeconfig, decoded.
fn kubeconfig_field(kubeconfig: &str, field: &str) -> Result<String> {
    let line = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .ok_or_else(|| failed(format!("no {field} in the minted kubeconfig")))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(line.trim().trim_matches('"'))
        .map_err(|e| failed(format!("{field}: {e}")))?;
    String::from_utf8(bytes).map_err(|e| failed(format!("{field}: {e}")))
}

/// A user certificate (eve's, minted with `shoal kubeconfig --user eve`, signed by the cluster
/// CA) presented to every node's peer port from the LAN host: every node refuses it.
pub(crate) fn user_cert_on_peer_port(
    rig: &dyn Rig,
    hosts: &[String],
    client: &str,
    hil_bin: &Path,
    scratch: &Scratch,
    m: &mut Measured,
) -> Result<()> {
    let kc = shoal::kubeconfig_for(rig, &hosts[0], "eve", &[])?;
    let dir = scratch.0.join("eve-pki");
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io { op: "create dir", path: dir.clone(), source })?;
    let ca = rig.data_dir(&hosts[0])?.join("pki/ca.crt");
    std::fs::copy(&ca, dir.join("ca.crt")).map_err(|source| Error::Io { op: "copy", path: ca, source })?;
    scratch.write("eve-pki/node.crt", &kubeconfig_field(&kc, "client-certificate-data")?)?;
    scratch.write("eve-pki/node.key", &kubeconfig_field(&kc, "client-key-data")?)?;
    let (bin, pki) = (hil_bin.display().to_string(), dir.display().to_string());
    let started = Instant::now();
    let results: Vec<Result<(String, std::result::Result<(), String>)>> = std::thread::scope(|s| {
        let calls: Vec<_> = hosts
            .iter()
            .map(|h| {
                let (bin, pki) = (&bin, &pki);
                s.spawn(move || -> Result<(String, std::result::Result<(), String>)> {
                    let addr = format!("{}:7443", rig.address(h)?);
                    let out = rig.exec_timeout(
                        client,
                        &[bin, "peer-call", "--addr", &addr, "--pki", pki],
                        Duration::from_secs(20),
                    )?;
                    Ok((h.clone(), if out.success() { Ok(()) } else { Err(out.stderr.trim().to_string()) }))
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap_or_else(|_| Err(failed("peer-call thread panicked")))).collect()
    });
    for r in results {
        match r? {
            (h, Ok(())) => return Err(failed(format!("{h} served a peer call to eve's user certificate"))),
            (h, Err(why)) => {
                let why = why.lines().last().unwrap_or_default().to_string();
                println!("peer port of {h} refuses eve's user certificate: {why}");
                m.note(format!("user certificate on {h}'s peer port: refused ({why})"));
            }
        }
    }
    m.set("user_cert_refused_ms", started.elapsed().as_millis() as f64);
    Ok(())
}

/// One pod: an init container plants `ln -s / /vol/escape` in an emptyDir; `victim` mounts
/// `subPath: escape`, `ok` mounts `subPath: inside`, `rootless` runs the root busybox image
/// under `runAsNonRoot: true`.
const TRAP_POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: trap
spec:
  nodeName: NODE
  initContainers:
  - name: plant
    image: busybox:1.25
    imagePullPolicy: Never
    command: [sh, -c, "ln -s / /vol/escape && mkdir -p /vol/inside && echo mine > /vol/inside/f"]
    volumeMounts: [{name: vol, mountPath: /vol}]
  containers:
  - name: ok
    image: busybox:1.25
    imagePullPolicy: Never
    command: [sh, -c, "cat /sub/f; sleep 3600"]
    volumeMounts: [{name: vol, mountPath: /sub, subPath: inside}]
  - name: victim
    image: busybox:1.25
    imagePullPolicy: Never
    command: [sh, -c, "ls /host; cat /host/etc/hostname; sleep 3600"]
    volumeMounts: [{name: vol, mountPath: /host, subPath: escape}]
  - name: rootless
    image: busybox:1.25
    imagePullPolicy: Never
    command: [sh, -c, "id; sleep 3600"]
    securityContext: {runAsNonRoot: true}
  terminationGracePeriodSeconds: 0
  volumes: [{name: vol, emptyDir: {}}]
"#;

/// Creates the trap pod on `node` (checked later by [`check_trap_pod`], so that the pod
/// starts while the other attacks run).
pub(crate) fn start_trap_pod(k: &Kubectl<'_>, first: &str, node: &str, scratch: &Scratch) -> Result<()> {
    let file = scratch.write("trap.yaml", &TRAP_POD.replace("NODE", node))?;
    k.apply(first, &file, shoal::CONVERGE_TIMEOUT)
}

/// The trap pod: `victim` waits in CreateContainerConfigError with the subPath cause, never
/// ran (no log, no host file seen), `rootless` waits with the kubelet's runAsNonRoot message,
/// both causes in `kubectl describe pod`, and the subPath inside the volume works.
pub(crate) fn check_trap_pod(k: &Kubectl<'_>, first: &str, m: &mut Measured) -> Result<()> {
    let started = Instant::now();
    let mut last = serde_json::Value::Null;
    let waiting = |v: &serde_json::Value, name: &str| -> (String, String) {
        v["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == name)
            .map(|c| {
                let w = &c["state"]["waiting"];
                (w["reason"].as_str().unwrap_or("").to_string(), w["message"].as_str().unwrap_or("").to_string())
            })
            .unwrap_or_default()
    };
    let mut ok_log = String::new();
    let done = crate::wait_until("the trap pod refused twice", Duration::from_secs(90), Duration::from_secs(1), || {
        let Ok(out) = k.on(first, &["get", "pod", "trap", "-o", "json"]) else { return false };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) else { return false };
        last = v;
        ok_log = k.on(first, &["logs", "trap", "-c", "ok"]).unwrap_or_default();
        waiting(&last, "victim").0 == "CreateContainerConfigError"
            && waiting(&last, "rootless").0 == "CreateContainerConfigError"
            && ok_log.contains("mine")
    });
    if done.is_err() {
        return Err(failed(format!(
            "the trap pod: victim {:?}, rootless {:?}, ok logged {ok_log:?}",
            waiting(&last, "victim"),
            waiting(&last, "rootless")
        )));
    }
    let (_, why) = waiting(&last, "victim");
    if !(why.contains("subPath") && why.contains("out of the volume")) {
        return Err(failed(format!("the subPath escape was refused without its cause: {why:?}")));
    }
    let (_, root_why) = waiting(&last, "rootless");
    if root_why != "container has runAsNonRoot and image will run as root" {
        return Err(failed(format!("runAsNonRoot refused with {root_why:?}")));
    }
    // Neither ever ran: no container, no log, the host's files unseen.
    for c in ["victim", "rootless"] {
        let status = last["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == c)
            .cloned()
            .unwrap_or_default();
        if status["containerID"].as_str().is_some_and(|id| !id.is_empty())
            || status["lastState"]["terminated"].is_object()
        {
            return Err(failed(format!("{c} ran: {status}")));
        }
        match k.on(first, &["logs", "trap", "-c", c]) {
            Ok(out) if !out.trim().is_empty() => return Err(failed(format!("{c} logged {out:?}"))),
            _ => {}
        }
    }
    let mut described = String::new();
    crate::wait_until("both causes in kubectl describe", Duration::from_secs(20), Duration::from_secs(1), || {
        described = k.on(first, &["describe", "pod", "trap"]).unwrap_or_default();
        described.contains("CreateContainerConfigError")
            && described.contains("out of the volume")
            && described.contains("container has runAsNonRoot and image will run as root")
    })
    .map_err(|_| failed(format!("kubectl describe pod trap does not say why:\n{described}")))?;
    println!("subPath escape refused: {why}");
    println!("root image under runAsNonRoot refused: {root_why}");
    m.note(format!("subPath escape refused ({why}); runAsNonRoot refused ({root_why})"));
    m.set("trap_pod_refused_s", started.elapsed().as_secs_f64());
    let _ = k.on(first, &["delete", "pod", "trap", "--wait=false"]);
    Ok(())
}

/// `kubectl -v=6 patch` of the ConfigMap `bomb` from the client: Err(stderr) expected.
fn patch(k: &Kubectl<'_>, host: &str, kind: &str, file: &Path) -> std::result::Result<String, String> {
    let f = file.display().to_string();
    k.on(host, &["-v=6", "patch", "configmap", "bomb", &format!("--type={kind}"), "--patch-file", &f])
}

/// Patch bombs from the LAN host through kubectl: a JSON Patch copy bomb (422), 10,001
/// operations (413), a merge patch nested 110 deep (422). Each is a Status, the API answers
/// right after, and the ConfigMap is unchanged.
pub(crate) fn patch_bombs(k: &Kubectl<'_>, hosts: &[String], scratch: &Scratch, m: &mut Measured) -> Result<()> {
    let first = &hosts[0];
    let cm =
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: bomb}}\ndata:\n  a: {}\n", "x".repeat(64 * 1024));
    k.apply(first, &scratch.write("bomb-cm.yaml", &cm)?, shoal::CONVERGE_TIMEOUT)?;
    let rv = |h: &str| k.on(h, &["get", "configmap", "bomb", "-o", "jsonpath={.metadata.resourceVersion}"]);
    let before = rv(first).map_err(failed)?;
    // Each copy doubles `data`: 64 KiB, 128 KiB, ... 64 GiB after 20 operations.
    let copies: Vec<serde_json::Value> = (0..40)
        .map(|i| serde_json::json!({"op": "copy", "from": "/data", "path": format!("/data/nested{i}")}))
        .collect();
    let many: Vec<serde_json::Value> =
        (0..10_001).map(|_| serde_json::json!({"op": "test", "path": "/metadata/name", "value": "bomb"})).collect();
    // Deeper than a patched object may be (100), shallower than the JSON reader's bound (128).
    let deep = format!("{}1{}", "{\"a\":".repeat(110), "}".repeat(110));
    let bombs = [
        ("json", "copy bomb", serde_json::to_string(&copies).unwrap_or_default(), "422", "exceeds the limit"),
        ("json", "10,001 operations", serde_json::to_string(&many).unwrap_or_default(), "413", "is 10000, got 10001"),
        (
            "merge",
            "merge patch 110 deep",
            format!("{{\"data\":{{\"x\":\"y\"}},\"z\":{deep}}}"),
            "422",
            "deeper than 100",
        ),
    ];
    let started = Instant::now();
    for (i, (kind, what, body, code, says)) in bombs.iter().enumerate() {
        let host = &hosts[i % hosts.len()];
        let file = scratch.write(&format!("bomb-{i}.json"), body)?;
        let err = match patch(k, host, kind, &file) {
            Ok(out) => return Err(failed(format!("the {what} was applied on {host}: {}", out.trim()))),
            Err(e) => e,
        };
        // -v=6 logs the response: `PATCH https://... 422 Unprocessable Entity in 3 milliseconds`
        // (older kubectl) or `"Response" verb="PATCH" ... status="422 Unprocessable Entity"`.
        let answered = err
            .lines()
            .any(|l| l.contains("PATCH") && (l.contains(&format!(" {code} ")) || l.contains(&format!("\"{code} "))));
        // kubectl words a 422 "The request is invalid: ...", a 413 "Error from server (...)".
        if !answered || !err.contains(says) {
            return Err(failed(format!("the {what} on {host} was not refused with a {code} Status: {err}")));
        }
        let msg =
            err.lines().find(|l| l.contains(says) && !l.contains("round_trippers")).unwrap_or_default().to_string();
        println!("{what}: {code} {msg}");
        m.note(format!("patch bomb ({what}) on {host}: {code} {}", msg.chars().take(160).collect::<String>()));
        // The API still answers, on every node, and the object is unchanged.
        for h in hosts {
            let now = rv(h).map_err(|e| failed(format!("after the {what}, the API of {h}: {e}")))?;
            if now != before {
                return Err(failed(format!("the {what} changed the ConfigMap on {h}: rv {before} -> {now}")));
            }
        }
    }
    let keys = k.on(first, &["get", "configmap", "bomb", "-o", "jsonpath={.data}"]).map_err(failed)?;
    if keys.contains("nested") || keys.contains("\"x\"") {
        return Err(failed("the ConfigMap holds what a bomb added"));
    }
    m.set("patch_bombs_s", started.elapsed().as_secs_f64());
    let _ = k.on(first, &["delete", "configmap", "bomb"]);
    Ok(())
}

/// What in a data dir may be open to group or world, and why (docs/security.md repeats it).
/// A path matches an entry when its components match, `*` standing for any one component;
/// an entry ending in `/**` covers everything below it (the gate itself is still checked).
const OPEN_ALLOWED: &[(&str, &str)] = &[
    ("pki/ca.crt", "the cluster CA certificate: public"),
    ("pki/node.crt", "the node's certificate: public"),
    ("node.json", "the node's name, id and addresses: public"),
    ("gossip-generation", "the last gossip generation: a counter"),
    ("images/index.json", "image names and digests, under images/ (0700)"),
    ("images/index.lock", "an empty lock file, under images/ (0700)"),
    ("images/ingest.lock", "an empty lock file, under images/ (0700)"),
    ("images/*/**", "layers, blobs, container upper dirs keep the image's modes, under images/ (0700)"),
];

fn allowed(rel: &Path) -> Option<&'static str> {
    let comps: Vec<&str> = rel.iter().filter_map(|c| c.to_str()).collect();
    OPEN_ALLOWED.iter().find_map(|(pat, why)| {
        let (pat, below) = match pat.strip_suffix("/**") {
            Some(p) => (p, true),
            None => (*pat, false),
        };
        let parts: Vec<&str> = pat.split('/').collect();
        let n = parts.len();
        let fits = if below { comps.len() > n } else { comps.len() == n };
        (fits && parts.iter().zip(&comps).all(|(p, c)| *p == "*" || p == c)).then_some(*why)
    })
}

/// Every entry of `host`'s data dir (no symlink followed): nothing group or world readable or
/// writable outside [`OPEN_ALLOWED`], nor setuid/setgid.
pub(crate) fn data_dir_modes(rig: &dyn Rig, host: &str, m: &mut Measured) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let data = rig.data_dir(host)?;
    let mut wrong = Vec::new();
    let mut checked = 0u64;
    let mut stack = vec![data.clone()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            // Gone meanwhile (a pod's log rotated, a temp file renamed).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(Error::Io { op: "read dir", path: dir, source }),
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            let rel = path.strip_prefix(&data).unwrap_or(&path).to_path_buf();
            let ft = meta.file_type();
            if ft.is_symlink() {
                continue;
            }
            checked += 1;
            let mode = meta.permissions().mode() & 0o7777;
            let open = mode & 0o066 != 0 || (mode & 0o6000 != 0 && !ft.is_dir());
            if open && allowed(&rel).is_none() {
                let kind = if ft.is_dir() {
                    "dir"
                } else if ft.is_socket() {
                    "socket"
                } else if ft.is_fifo() {
                    "fifo"
                } else {
                    "file"
                };
                wrong.push(format!("{} ({kind}) is {mode:o}", rel.display()));
            }
            // A gate of a `/**` entry: checked itself, its content is not.
            if ft.is_dir() && allowed(&rel.join("x")).is_none() {
                stack.push(path);
            }
        }
    }
    if !wrong.is_empty() {
        wrong.sort();
        let n = wrong.len();
        wrong.truncate(20);
        return Err(failed(format!("{n} entries of {host}'s data dir are open to others: {}", wrong.join("; "))));
    }
    m.set("data_dir_entries_checked", checked as f64);
    m.note(format!("data dir of {host}: {checked} entries, none open to group or world outside the allow-list"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list_matches_what_it_says() {
        assert!(allowed(Path::new("pki/ca.crt")).is_some());
        assert!(allowed(Path::new("pki/node.key")).is_none());
        assert!(allowed(Path::new("images/layers")).is_none());
        assert!(allowed(Path::new("images")).is_none());
        assert!(allowed(Path::new("pods/ns_web_1/web/0.log")).is_none());
        assert!(allowed(Path::new("images/layers/abc/etc/passwd")).is_some());
        assert!(allowed(Path::new("secrets.json")).is_none());
        assert!(allowed(Path::new("store/store.redb")).is_none());
    }

    #[test]
    fn kubeconfig_fields_decode() {
        let kc = "users:\n- name: eve\n  user:\n    client-certificate-data: aGVsbG8=\n    client-key-data: a2V5\n";
        assert_eq!(kubeconfig_field(kc, "client-certificate-data").unwrap(), "hello");
        assert_eq!(kubeconfig_field(kc, "client-key-data").unwrap(), "key");
        assert!(kubeconfig_field(kc, "token").is_err());
    }
}
