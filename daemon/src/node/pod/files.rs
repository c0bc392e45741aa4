//! What a pod's containers see on disk: the pod files (hosts, resolv.conf, tokens), the
//! volumes (emptyDir, tmpfs, claims, projected), the bind mounts, and their removal.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{chain, PodState};
use crate::node::spec;
use crate::node::{token, volumes, Agent, AgentError};
use crate::reconcile::events::Type;

/// A bind mount: host path, container path, read-only.
pub(super) type Mount = (String, String, bool);

impl Agent {
    /// /etc/hosts, /etc/hostname, /etc/resolv.conf and the volumes: emptyDir, the ones the agent
    /// fills (configMap, secret, downwardAPI, projected, rewritten in place when their sources
    /// change) and persistentVolumeClaims (a link to the bound volume's directory).
    pub(super) async fn write_pod_files(&self, pod: &Value, st: &PodState, dir: &Path) -> Result<(), AgentError> {
        let io = |e: std::io::Error| AgentError::Pod(format!("writing pod files in {}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        let name = pod["metadata"]["name"].as_str().unwrap_or("pod");
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let ip = st.ip.map(|i| i.to_string()).unwrap_or_else(|| self.cfg.address.to_string());
        let hosts = crate::node::dns_files::hosts(pod, ns, &ip);
        write_if_changed(&dir.join("hosts"), hosts.as_bytes()).map_err(io)?;
        let hostname = pod["spec"]["hostname"].as_str().filter(|h| !h.is_empty()).unwrap_or(name);
        write_if_changed(&dir.join("hostname"), format!("{hostname}\n").as_bytes()).map_err(io)?;
        let resolv = crate::node::dns_files::resolv_conf(
            pod,
            ns,
            &self.cfg.dns_ip.to_string(),
            &crate::node::dns_files::host_resolv(),
        );
        write_if_changed(&dir.join("resolv.conf"), resolv.as_bytes()).map_err(io)?;
        let vols: Vec<Value> = pod["spec"]["volumes"].as_array().cloned().unwrap_or_default();
        let (cm_names, secret_names) = volumes::referenced(&vols);
        let mut configmaps = BTreeMap::new();
        for n in cm_names {
            if let Ok(Some(o)) = self.cfg.objects.get(&crate::node::res("configmaps"), Some(ns), &n).await {
                configmaps.insert(n, o);
            }
        }
        let mut secrets = BTreeMap::new();
        for n in secret_names {
            if let Ok(Some(o)) = self.cfg.objects.get(&crate::node::res("secrets"), Some(ns), &n).await {
                secrets.insert(n, o);
            }
        }
        let binding =
            if vols.iter().any(volumes::wants_token) { self.token_binding(pod).await } else { Default::default() };
        let (node_cpu_millis, node_memory_bytes) = self.allocatable;
        for v in &vols {
            let vname = v["name"].as_str().unwrap_or_default();
            if vname.is_empty() || vname.contains('/') || vname.starts_with('.') {
                continue;
            }
            let vdir = dir.join("volumes").join(vname);
            if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
                if let Err(msg) = self.link_claim(ns, claim, &vdir).await {
                    self.events.emit(pod, None, Type::Warning, "FailedMount", &msg);
                    return Err(AgentError::Pod(msg));
                }
                continue;
            }
            std::fs::create_dir_all(&vdir).map_err(io)?;
            if v["emptyDir"]["medium"].as_str() == Some("Memory") {
                let size = v["emptyDir"]["sizeLimit"].as_str().and_then(spec::bytes);
                mount_tmpfs(&vdir, size).map_err(io)?;
                continue;
            }
            let mint = |r: &volumes::TokenRequest<'_>| -> Result<String, String> {
                let signer =
                    self.signer.as_ref().map(token::TokenKeys::signer).ok_or("this node holds no cluster secrets")?;
                let now = jiff::Timestamp::now().as_second();
                if let Ok(old) = std::fs::read_to_string(vdir.join(r.path)) {
                    if token::still_fresh(&old, &r.audiences, &binding, now) {
                        return Ok(old);
                    }
                }
                signer.sign(&token::claims(&binding, &r.audiences, now, r.expiration_secs)).map_err(|e| e.to_string())
            };
            let src = volumes::Sources {
                configmaps: &configmaps,
                secrets: &secrets,
                token: &mint,
                ca_crt: self.ca_crt.as_deref(),
                node_cpu_millis,
                node_memory_bytes,
            };
            match volumes::files(pod, v, &src) {
                None => {}
                Some(Ok(files)) => {
                    volumes::write(&vdir, &files).map_err(io)?;
                }
                Some(Err(e)) => {
                    let err = AgentError::Mount { volume: vname.to_string(), message: e.to_string() };
                    self.events.emit(pod, None, Type::Warning, "FailedMount", &err.to_string());
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// Points a claim's volume directory at the node-local directory of its bound volume.
    pub(super) async fn link_claim(&self, ns: &str, claim: &str, vdir: &Path) -> Result<(), String> {
        let pvc = self
            .cfg
            .objects
            .get(&crate::node::res("persistentvolumeclaims"), Some(ns), claim)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("persistentvolumeclaim \"{claim}\" not found"))?;
        let pv_name = pvc["spec"]["volumeName"].as_str().filter(|v| !v.is_empty());
        let Some(pv_name) = pv_name.filter(|_| pvc["status"]["phase"] == "Bound") else {
            return Err(format!("persistentvolumeclaim \"{claim}\" is not bound yet"));
        };
        let pv = self
            .cfg
            .objects
            .get(&crate::node::res("persistentvolumes"), None, pv_name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("persistentvolume \"{pv_name}\" not found"))?;
        let node = self.cfg.objects.get(&self.nodes, None, &self.cfg.node_name).await.ok().flatten();
        if let Some(node) = &node {
            if !crate::reconcile::volumes::pv_fits_node(&pv, node) {
                return Err(format!("persistentvolume \"{pv_name}\" is bound to another node"));
            }
        }
        let path = crate::reconcile::volumes::host_path(&pv)
            .ok_or_else(|| format!("persistentvolume \"{pv_name}\" has no local or hostPath source"))?;
        let path = PathBuf::from(path);
        if crate::reconcile::volumes::is_provisioned_here(&pv) || pv["spec"]["hostPath"]["type"] == "DirectoryOrCreate"
        {
            std::fs::create_dir_all(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        } else if !path.is_dir() {
            return Err(format!("path {} of persistentvolume \"{pv_name}\" does not exist", path.display()));
        }
        if std::fs::read_link(vdir).ok().as_deref() == Some(path.as_path()) {
            return Ok(());
        }
        if let Some(parent) = vdir.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        let _ = std::fs::remove_file(vdir);
        let _ = std::fs::remove_dir(vdir);
        std::os::unix::fs::symlink(&path, vdir).map_err(|e| format!("linking {}: {e}", vdir.display()))
    }

    /// The pod as this node runs it: with the ServiceAccount token volume injected (unless
    /// the pod or its ServiceAccount opts out, or this node cannot sign tokens).
    pub(crate) async fn effective_pod(&self, pod: &Value) -> Value {
        if self.signer.is_none() {
            return pod.clone();
        }
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let sa_name = pod["spec"]["serviceAccountName"].as_str().filter(|s| !s.is_empty()).unwrap_or("default");
        let sa = self.cfg.objects.get(&crate::node::res("serviceaccounts"), Some(ns), sa_name).await.ok().flatten();
        volumes::with_service_account_volume(pod, volumes::automount(pod, sa.as_ref()))
    }

    /// Who the pod's tokens speak for: its ServiceAccount (with uid), the pod and this node.
    pub(super) async fn token_binding(&self, pod: &Value) -> token::Binding {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let sa_name = pod["spec"]["serviceAccountName"].as_str().filter(|s| !s.is_empty()).unwrap_or("default");
        let sa = self.cfg.objects.get(&crate::node::res("serviceaccounts"), Some(ns), sa_name).await.ok().flatten();
        let node = self.cfg.objects.get(&self.nodes, None, &self.cfg.node_name).await.ok().flatten();
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        token::Binding {
            namespace: ns.to_string(),
            service_account: sa_name.to_string(),
            service_account_uid: sa.map(|a| s(&a["metadata"]["uid"])).unwrap_or_default(),
            pod_name: s(&pod["metadata"]["name"]),
            pod_uid: s(&pod["metadata"]["uid"]),
            node_name: self.cfg.node_name.clone(),
            node_uid: node.map(|n| s(&n["metadata"]["uid"])).unwrap_or_default(),
        }
    }
}

/// The volume mounts of container `c`; a `subPath` that leads out of its volume is the
/// kubelet's CreateContainerConfigError.
pub(super) fn volume_mounts(pod: &Value, c: &Value, dir: &Path) -> Result<Vec<Mount>, (String, String)> {
    let volumes: BTreeMap<&str, &Value> = pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v["name"].as_str()?, v)))
        .collect();
    let mut out = Vec::new();
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let (Some(name), Some(path)) = (m["name"].as_str(), m["mountPath"].as_str()) else { continue };
        let Some(v) = volumes.get(name) else { continue };
        if name.contains('/') || name.starts_with('.') {
            continue;
        }
        let ro = m["readOnly"].as_bool().unwrap_or(false);
        let mut src = if let Some(hp) = v["hostPath"]["path"].as_str() {
            PathBuf::from(hp)
        } else {
            dir.join("volumes").join(name)
        };
        if let Some(sub) = m["subPath"].as_str().filter(|s| !s.is_empty()) {
            src = crate::node::subpath::resolve(&src, sub).map_err(|e| {
                (
                    "CreateContainerConfigError".to_string(),
                    format!(
                        "failed to prepare subPath for volumeMount {name:?} of container {:?}: {}",
                        c["name"].as_str().unwrap_or(""),
                        chain(&e)
                    ),
                )
            })?;
        }
        let ro = ro
            || ["configMap", "secret", "projected", "downwardAPI"].iter().any(|k| v.get(*k).is_some())
            || v["persistentVolumeClaim"]["readOnly"].as_bool() == Some(true);
        out.push((src.to_string_lossy().to_string(), path.to_string(), ro));
    }
    Ok(out)
}

/// Whether `path` is a mount point (its device differs from its parent's).
pub(super) fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), path.parent().map(std::fs::metadata)) {
        (Ok(m), Some(Ok(p))) => m.dev() != p.dev(),
        _ => false,
    }
}

/// An emptyDir with `medium: Memory`: a tmpfs (of `sizeLimit` bytes when set), mounted once.
pub(super) fn mount_tmpfs(dir: &Path, size: Option<u64>) -> std::io::Result<()> {
    if is_mount_point(dir) {
        return Ok(());
    }
    let mut data = String::from("mode=1777");
    if let Some(bytes) = size.filter(|b| *b > 0) {
        data.push_str(&format!(",size={bytes}"));
    }
    use nix::mount::MsFlags;
    nix::mount::mount(Some("tmpfs"), dir, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(data.as_str()))
        .map_err(std::io::Error::from)
}

/// Unmounts the tmpfs volumes of a pod before its directory is removed.
pub(super) fn unmount_volumes(volumes: &Path) {
    for e in std::fs::read_dir(volumes).into_iter().flatten().flatten() {
        let p = e.path();
        // A claim's volume is a link to its directory on the node: nothing mounted there.
        if e.file_type().is_ok_and(|t| t.is_symlink()) {
            continue;
        }
        if is_mount_point(&p) {
            if let Err(err) = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(path = %p.display(), error = %err, "unmounting a memory volume");
            }
        }
    }
}

pub(super) fn write_if_changed(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if std::fs::read(path).ok().as_deref() == Some(data) {
        return Ok(());
    }
    std::fs::write(path, data)
}
