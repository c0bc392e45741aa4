//! The content of the volumes the agent fills itself: configMap, secret, downwardAPI and
//! projected (configMap, secret, downwardAPI and serviceAccountToken sources), with `items`,
//! `defaultMode` and per-item `mode`; the ServiceAccount volume `kube-api-access-*` every pod
//! gets unless it opts out; and the writer that swaps a volume's content atomically, as the
//! kubelet does (`..data` symlink to a timestamped directory), so a container never reads a
//! half-written update.
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{json, Value};

/// Where client libraries look for the ServiceAccount token, CA and namespace.
pub const SA_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The ConfigMap with the cluster CA certificate (`ca.crt`); in a namespace without it, the
/// node's copy of the CA certificate stands in.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// `defaultMode` when a volume does not set one (0644).
const DEFAULT_MODE: u32 = 0o644;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum VolumeError {
    #[error("{kind} \"{name}\" not found")]
    SourceMissing { kind: &'static str, name: String },
    #[error("{kind} \"{name}\" has no key \"{key}\"")]
    KeyMissing { kind: &'static str, name: String, key: String },
    #[error("invalid file path {0:?} in a volume")]
    BadPath(String),
    #[error("field {0:?} cannot be projected into a volume")]
    Field(String),
    #[error("no container {0:?} for a resourceFieldRef")]
    Container(String),
    #[error("cannot mint a service account token: {0}")]
    Token(String),
}

/// One file of a volume: path relative to the volume, content, permission bits.
#[derive(Debug, Clone, PartialEq)]
pub struct File {
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
}

/// A service account token a projected volume asks for.
pub struct TokenRequest<'a> {
    pub path: &'a str,
    pub audiences: Vec<String>,
    pub expiration_secs: i64,
}

/// What the volumes are made from, fetched before (so building them is pure).
pub struct Sources<'a> {
    pub configmaps: &'a BTreeMap<String, Value>,
    pub secrets: &'a BTreeMap<String, Value>,
    /// Mints (or keeps) the token of a serviceAccountToken source.
    pub token: &'a dyn Fn(&TokenRequest<'_>) -> Result<String, String>,
    /// The cluster CA certificate, for `kube-root-ca.crt` where the namespace lacks it.
    pub ca_crt: Option<&'a str>,
    /// The node's allocatable cpu (millicores) and memory (bytes): a resourceFieldRef of a
    /// limit the container does not set reports these, as the kubelet does.
    pub node_cpu_millis: u64,
    pub node_memory_bytes: u64,
}

fn mode_of(v: &Value, default: u32) -> u32 {
    v.as_u64().map(|m| (m as u32) & 0o7777).unwrap_or(default)
}

fn check_path(p: &str) -> Result<(), VolumeError> {
    let bad =
        p.is_empty() || p.starts_with('/') || p.split('/').any(|c| c == ".." || c.is_empty()) || p.starts_with("..");
    if bad {
        return Err(VolumeError::BadPath(p.to_string()));
    }
    Ok(())
}

/// The keys of a ConfigMap (`data` and `binaryData`) or Secret (`data`, base64) as bytes.
fn entries(kind: &str, obj: &Value) -> BTreeMap<String, Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = BTreeMap::new();
    for (k, v) in obj["data"].as_object().into_iter().flatten() {
        let Some(s) = v.as_str() else { continue };
        let bytes = if kind == "secret" { b64.decode(s).unwrap_or_default() } else { s.as_bytes().to_vec() };
        out.insert(k.clone(), bytes);
    }
    if kind == "configmap" {
        for (k, v) in obj["binaryData"].as_object().into_iter().flatten() {
            if let Some(bytes) = v.as_str().and_then(|s| b64.decode(s).ok()) {
                out.insert(k.clone(), bytes);
            }
        }
    }
    out
}

/// Files of a configMap or secret source: every key, or only the `items`.
fn keyed(
    kind: &'static str,
    name: &str,
    obj: Option<&Value>,
    src: &Value,
    default_mode: u32,
) -> Result<Vec<File>, VolumeError> {
    let optional = src["optional"].as_bool() == Some(true);
    let Some(obj) = obj else {
        return if optional { Ok(Vec::new()) } else { Err(VolumeError::SourceMissing { kind, name: name.into() }) };
    };
    let data = entries(kind, obj);
    let mut out = Vec::new();
    match src["items"].as_array() {
        Some(items) => {
            for it in items {
                let key = it["key"].as_str().unwrap_or_default();
                let path = it["path"].as_str().unwrap_or(key);
                check_path(path)?;
                match data.get(key) {
                    Some(d) => {
                        out.push(File { path: path.into(), data: d.clone(), mode: mode_of(&it["mode"], default_mode) })
                    }
                    None if optional => {}
                    None => return Err(VolumeError::KeyMissing { kind, name: name.into(), key: key.into() }),
                }
            }
        }
        None => {
            for (k, d) in data {
                if check_path(&k).is_ok() && !k.contains('/') {
                    out.push(File { path: k, data: d, mode: default_mode });
                }
            }
        }
    }
    Ok(out)
}

/// `key="value"` lines, sorted by key, as the kubelet writes labels and annotations.
fn map_lines(m: &Value) -> String {
    let mut lines: Vec<String> = m
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let v = v.as_str().unwrap_or_default();
            let esc = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            format!("{k}=\"{esc}\"")
        })
        .collect();
    lines.sort();
    lines.join("\n")
}

/// The value of a downward API `fieldRef` in a volume (only metadata, as upstream allows).
pub fn field_value(pod: &Value, path: &str) -> Result<String, VolumeError> {
    let m = &pod["metadata"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    Ok(match path {
        "metadata.name" => s(&m["name"]),
        "metadata.namespace" => s(&m["namespace"]),
        "metadata.uid" => s(&m["uid"]),
        "metadata.labels" => map_lines(&m["labels"]),
        "metadata.annotations" => map_lines(&m["annotations"]),
        p => {
            if let Some(k) = p.strip_prefix("metadata.labels['").and_then(|k| k.strip_suffix("']")) {
                s(&m["labels"][k])
            } else if let Some(k) = p.strip_prefix("metadata.annotations['").and_then(|k| k.strip_suffix("']")) {
                s(&m["annotations"][k])
            } else {
                return Err(VolumeError::Field(p.to_string()));
            }
        }
    })
}

/// The value of a `resourceFieldRef` (`limits.cpu`, `requests.memory`, ...) divided by its
/// divisor and rounded up; a limit the container does not set reads as the node's allocatable.
pub fn resource_value(pod: &Value, r: &Value, src: &Sources<'_>) -> Result<String, VolumeError> {
    let cname = r["containerName"].as_str().unwrap_or_default();
    let all = pod["spec"]["containers"].as_array().into_iter().flatten();
    let c = all
        .chain(pod["spec"]["initContainers"].as_array().into_iter().flatten())
        .find(|c| c["name"].as_str() == Some(cname))
        .ok_or_else(|| VolumeError::Container(cname.to_string()))?;
    let resource = r["resource"].as_str().unwrap_or_default();
    let (section, name) = resource.split_once('.').unwrap_or(("limits", resource));
    let set = c["resources"][section][name].as_str().or_else(|| {
        // A request that is not set defaults to the limit.
        (section == "requests").then(|| c["resources"]["limits"][name].as_str()).flatten()
    });
    let div = r["divisor"].as_str().filter(|d| !d.is_empty());
    let ceil = |v: u64, d: u64| if d == 0 { v } else { v.div_ceil(d) };
    Ok(match name {
        "cpu" => {
            let v = set.and_then(super::spec::cpu_millis).unwrap_or(if section == "limits" {
                src.node_cpu_millis
            } else {
                0
            });
            ceil(v, div.and_then(super::spec::cpu_millis).unwrap_or(1000)).to_string()
        }
        "memory" | "ephemeral-storage" => {
            let v = set.and_then(super::spec::bytes).unwrap_or(if section == "limits" && name == "memory" {
                src.node_memory_bytes
            } else {
                0
            });
            ceil(v, div.and_then(super::spec::bytes).unwrap_or(1)).to_string()
        }
        _ => return Err(VolumeError::Field(resource.to_string())),
    })
}

fn downward(pod: &Value, items: &Value, default_mode: u32, src: &Sources<'_>) -> Result<Vec<File>, VolumeError> {
    let mut out = Vec::new();
    for it in items.as_array().into_iter().flatten() {
        let path = it["path"].as_str().unwrap_or_default();
        check_path(path)?;
        let value = if let Some(f) = it["fieldRef"]["fieldPath"].as_str() {
            field_value(pod, f)?
        } else if it["resourceFieldRef"].is_object() {
            resource_value(pod, &it["resourceFieldRef"], src)?
        } else {
            continue;
        };
        out.push(File { path: path.into(), data: value.into_bytes(), mode: mode_of(&it["mode"], default_mode) });
    }
    Ok(out)
}

fn configmap<'a>(src: &'a Sources<'_>, name: &str, ca: &'a Option<Value>) -> Option<&'a Value> {
    src.configmaps.get(name).or(if name == ROOT_CA_CONFIGMAP { ca.as_ref() } else { None })
}

/// The files of a volume the agent fills, or `None` for any other kind of volume.
pub fn files(pod: &Value, vol: &Value, src: &Sources<'_>) -> Option<Result<Vec<File>, VolumeError>> {
    let ca = src.ca_crt.map(|c| json!({"data": {"ca.crt": c}}));
    let out = if let Some(cm) = vol.get("configMap") {
        let name = cm["name"].as_str().unwrap_or_default();
        keyed("configmap", name, configmap(src, name, &ca), cm, mode_of(&cm["defaultMode"], DEFAULT_MODE))
    } else if let Some(s) = vol.get("secret") {
        let name = s["secretName"].as_str().unwrap_or_default();
        keyed("secret", name, src.secrets.get(name), s, mode_of(&s["defaultMode"], DEFAULT_MODE))
    } else if let Some(d) = vol.get("downwardAPI") {
        downward(pod, &d["items"], mode_of(&d["defaultMode"], DEFAULT_MODE), src)
    } else if let Some(p) = vol.get("projected") {
        projected(pod, p, src, &ca)
    } else {
        return None;
    };
    Some(out)
}

fn projected(pod: &Value, p: &Value, src: &Sources<'_>, ca: &Option<Value>) -> Result<Vec<File>, VolumeError> {
    let mode = mode_of(&p["defaultMode"], DEFAULT_MODE);
    let mut out: Vec<File> = Vec::new();
    for s in p["sources"].as_array().into_iter().flatten() {
        if let Some(cm) = s.get("configMap") {
            let name = cm["name"].as_str().unwrap_or_default();
            out.extend(keyed("configmap", name, configmap(src, name, ca), cm, mode)?);
        } else if let Some(sec) = s.get("secret") {
            let name = sec["name"].as_str().unwrap_or_default();
            out.extend(keyed("secret", name, src.secrets.get(name), sec, mode)?);
        } else if let Some(d) = s.get("downwardAPI") {
            out.extend(downward(pod, &d["items"], mode, src)?);
        } else if let Some(t) = s.get("serviceAccountToken") {
            let path = t["path"].as_str().unwrap_or_default();
            check_path(path)?;
            let req = TokenRequest {
                path,
                audiences: t["audience"]
                    .as_str()
                    .filter(|a| !a.is_empty())
                    .map(|a| vec![a.to_string()])
                    .unwrap_or_default(),
                expiration_secs: t["expirationSeconds"].as_i64().unwrap_or(super::token::DEFAULT_EXPIRATION_SECS),
            };
            let tok = (src.token)(&req).map_err(VolumeError::Token)?;
            out.push(File { path: path.into(), data: tok.into_bytes(), mode });
        }
    }
    // A later source wins a path, as in the kubelet.
    let mut seen = BTreeSet::new();
    let mut dedup: Vec<File> = out.into_iter().rev().filter(|f| seen.insert(f.path.clone())).collect();
    dedup.reverse();
    Ok(dedup)
}

/// Names of the ConfigMaps and Secrets a pod's volumes read.
pub fn referenced(volumes: &[Value]) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut cms = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    let mut add = |v: &Value| {
        if let Some(n) = v["configMap"]["name"].as_str() {
            cms.insert(n.to_string());
        }
        if let Some(n) = v["secret"]["secretName"].as_str().or(v["secret"]["name"].as_str()) {
            secrets.insert(n.to_string());
        }
    };
    for v in volumes {
        add(v);
        for s in v["projected"]["sources"].as_array().into_iter().flatten() {
            add(s);
        }
    }
    (cms, secrets)
}

/// Whether any source of a volume is a service account token.
pub fn wants_token(vol: &Value) -> bool {
    vol["projected"]["sources"].as_array().into_iter().flatten().any(|s| s.get("serviceAccountToken").is_some())
}

/// The pod as the agent runs it: with the `kube-api-access-*` projected volume (token, CA,
/// namespace) mounted read-only at [`SA_MOUNT_PATH`] in every container, unless `automount`
/// is false or a container mounts something there itself.
pub fn with_service_account_volume(pod: &Value, automount: bool) -> Value {
    let mut pod = pod.clone();
    if !automount || pod["spec"]["volumes"].as_array().into_iter().flatten().any(is_api_access) {
        return pod;
    }
    let suffix: String = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .take(5)
        .collect();
    let name = format!("kube-api-access-{suffix}");
    let vol = json!({"name": name, "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": super::token::DEFAULT_EXPIRATION_SECS, "path": "token"}},
        {"configMap": {"name": ROOT_CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}, "path": "namespace"}]}},
    ]}});
    let mut used = false;
    for list in ["initContainers", "containers"] {
        for c in pod["spec"][list].as_array_mut().into_iter().flatten() {
            let taken = c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| m["mountPath"].as_str().map(|p| p.trim_end_matches('/')) == Some(SA_MOUNT_PATH));
            if taken {
                continue;
            }
            let mount = json!({"name": name, "mountPath": SA_MOUNT_PATH, "readOnly": true});
            match c["volumeMounts"].as_array_mut() {
                Some(m) => m.push(mount),
                None => c["volumeMounts"] = json!([mount]),
            }
            used = true;
        }
    }
    if used {
        match pod["spec"]["volumes"].as_array_mut() {
            Some(v) => v.push(vol),
            None => pod["spec"]["volumes"] = json!([vol]),
        }
    }
    pod
}

fn is_api_access(v: &Value) -> bool {
    v["name"].as_str().is_some_and(|n| n.starts_with("kube-api-access-"))
}

/// Whether the agent mounts a token into this pod: the pod's `automountServiceAccountToken`,
/// else its ServiceAccount's, else yes.
pub fn automount(pod: &Value, service_account: Option<&Value>) -> bool {
    pod["spec"]["automountServiceAccountToken"]
        .as_bool()
        .or_else(|| service_account.and_then(|sa| sa["automountServiceAccountToken"].as_bool()))
        .unwrap_or(true)
}

const DATA_LINK: &str = "..data";

/// The files currently visible in a volume written by [`write`], with their modes.
fn current(dir: &Path) -> Option<Vec<File>> {
    let target = std::fs::read_link(dir.join(DATA_LINK)).ok()?;
    let root = dir.join(target);
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).ok()?.flatten() {
            let rel = rel.join(e.file_name());
            let meta = e.metadata().ok()?;
            if meta.is_dir() {
                stack.push(rel);
            } else {
                use std::os::unix::fs::PermissionsExt;
                let data = std::fs::read(root.join(&rel)).ok()?;
                out.push(File {
                    path: rel.to_string_lossy().into_owned(),
                    data,
                    mode: meta.permissions().mode() & 0o7777,
                });
            }
        }
    }
    Some(out)
}

fn sorted(mut f: Vec<File>) -> Vec<File> {
    f.sort_by(|a, b| a.path.cmp(&b.path));
    f
}

/// Makes `dir` show exactly `files`, swapping the whole content at once; says whether
/// anything changed. Unchanged content is not rewritten.
pub fn write(dir: &Path, files: &[File]) -> io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    if current(dir).map(sorted) == Some(sorted(files.to_vec())) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir)?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let ts = format!("..{nanos}");
    let new = dir.join(&ts);
    std::fs::create_dir_all(&new)?;
    for f in files {
        let p = new.join(&f.path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, &f.data)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(f.mode))?;
    }
    let old = std::fs::read_link(dir.join(DATA_LINK)).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&ts, &tmp)?;
    std::fs::rename(&tmp, dir.join(DATA_LINK))?;
    // The user-visible names: one symlink per top-level entry into `..data`.
    let top: BTreeSet<String> = files.iter().filter_map(|f| f.path.split('/').next().map(String::from)).collect();
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("..") || top.contains(&name) {
            continue;
        }
        let p = e.path();
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p)?,
            Ok(_) => std::fs::remove_file(&p)?,
            Err(_) => {}
        }
    }
    for name in &top {
        let p = dir.join(name);
        let want = Path::new(DATA_LINK).join(name);
        match std::fs::read_link(&p) {
            Ok(t) if t == want => continue,
            _ => {}
        }
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p)?,
            Ok(_) => std::fs::remove_file(&p)?,
            Err(_) => {}
        }
        std::os::unix::fs::symlink(&want, &p)?;
    }
    if let Some(old) = old.filter(|o| o.as_os_str() != ts.as_str()) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Value {
        json!({
            "metadata": {"name": "web-0", "namespace": "shop", "uid": "AB12cd-34",
                "labels": {"app": "web", "tier": "front"}, "annotations": {"note": "say \"hi\""}},
            "spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": "64Mi", "cpu": "250m"}}}]},
        })
    }

    fn sources<'a>(
        cms: &'a BTreeMap<String, Value>,
        secrets: &'a BTreeMap<String, Value>,
        token: &'a dyn Fn(&TokenRequest<'_>) -> Result<String, String>,
    ) -> Sources<'a> {
        Sources {
            configmaps: cms,
            secrets,
            token,
            ca_crt: Some("CA PEM"),
            node_cpu_millis: 4000,
            node_memory_bytes: 8 << 30,
        }
    }

    fn by_path(files: &[File]) -> BTreeMap<String, (String, u32)> {
        files.iter().map(|f| (f.path.clone(), (String::from_utf8_lossy(&f.data).into_owned(), f.mode))).collect()
    }

    #[test]
    fn downward_api_writes_labels_annotations_and_resources() {
        let (cms, secrets) = (BTreeMap::new(), BTreeMap::new());
        let tok = |_: &TokenRequest<'_>| Ok("t".to_string());
        let src = sources(&cms, &secrets, &tok);
        let vol = json!({"name": "info", "downwardAPI": {"defaultMode": 0o600, "items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
            {"path": "sub/name", "fieldRef": {"fieldPath": "metadata.name"}, "mode": 0o400},
            {"path": "app", "fieldRef": {"fieldPath": "metadata.labels['app']"}},
            {"path": "mem", "resourceFieldRef": {"containerName": "app", "resource": "limits.memory", "divisor": "1Mi"}},
            {"path": "cpu", "resourceFieldRef": {"containerName": "app", "resource": "limits.cpu", "divisor": "1m"}},
            {"path": "cpu-req", "resourceFieldRef": {"containerName": "app", "resource": "requests.cpu"}},
        ]}});
        let f = by_path(&files(&pod(), &vol, &src).expect("downwardAPI").expect("files"));
        assert_eq!(f["labels"], ("app=\"web\"\ntier=\"front\"".into(), 0o600));
        assert_eq!(f["annotations"].0, "note=\"say \\\"hi\\\"\"");
        assert_eq!(f["sub/name"], ("web-0".into(), 0o400));
        assert_eq!(f["app"].0, "web");
        assert_eq!(f["mem"].0, "64");
        assert_eq!(f["cpu"].0, "250");
        assert_eq!(f["cpu-req"].0, "1");
        let bad = json!({"downwardAPI": {"items": [{"path": "../x", "fieldRef": {"fieldPath": "metadata.name"}}]}});
        assert!(matches!(files(&pod(), &bad, &src), Some(Err(VolumeError::BadPath(_)))));
        let ip = json!({"downwardAPI": {"items": [{"path": "ip", "fieldRef": {"fieldPath": "status.podIP"}}]}});
        assert!(matches!(files(&pod(), &ip, &src), Some(Err(VolumeError::Field(_)))));
    }

    #[test]
    fn projected_combines_sources_with_items_and_modes() {
        let mut cms = BTreeMap::new();
        cms.insert("cfg".to_string(), json!({"data": {"a": "1", "b": "2"}}));
        let mut secrets = BTreeMap::new();
        secrets.insert("pw".to_string(), json!({"data": {"pass": "aHVudGVyMg=="}}));
        let tok = |r: &TokenRequest<'_>| Ok(format!("tok-for-{}", r.audiences.join(",")));
        let src = sources(&cms, &secrets, &tok);
        let vol = json!({"projected": {"defaultMode": 0o440, "sources": [
            {"configMap": {"name": "cfg", "items": [{"key": "b", "path": "conf/b.txt", "mode": 0o644}]}},
            {"secret": {"name": "pw"}},
            {"downwardAPI": {"items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
            {"serviceAccountToken": {"path": "vault-token", "audience": "vault"}},
            {"configMap": {"name": "missing", "optional": true}},
        ]}});
        let f = by_path(&files(&pod(), &vol, &src).expect("projected").expect("files"));
        assert_eq!(f.len(), 4);
        assert_eq!(f["conf/b.txt"], ("2".into(), 0o644));
        assert_eq!(f["pass"], ("hunter2".into(), 0o440));
        assert_eq!(f["ns"].0, "shop");
        assert_eq!(f["vault-token"].0, "tok-for-vault");
        let missing = json!({"configMap": {"name": "nope"}});
        assert_eq!(
            files(&pod(), &missing, &src),
            Some(Err(VolumeError::SourceMissing { kind: "configmap", name: "nope".into() }))
        );
        let no_key = json!({"secret": {"secretName": "pw", "items": [{"key": "user", "path": "u"}]}});
        assert!(matches!(files(&pod(), &no_key, &src), Some(Err(VolumeError::KeyMissing { .. }))));
        assert_eq!(files(&pod(), &json!({"emptyDir": {}}), &src), None);
    }

    #[test]
    fn service_account_volume_is_injected_unless_opted_out() {
        let p = json!({"metadata": {"uid": "AB12cd-34", "namespace": "shop"},
            "spec": {"containers": [{"name": "a"}, {"name": "b", "volumeMounts": [{"name": "own", "mountPath": SA_MOUNT_PATH}]}]}});
        let out = with_service_account_volume(&p, true);
        assert_eq!(out["spec"]["volumes"][0]["name"], "kube-api-access-ab12c");
        assert_eq!(out["spec"]["containers"][0]["volumeMounts"][0]["mountPath"], SA_MOUNT_PATH);
        assert_eq!(out["spec"]["containers"][1]["volumeMounts"].as_array().map(Vec::len), Some(1));
        assert_eq!(with_service_account_volume(&p, false), p);
        assert!(!automount(&json!({"spec": {}}), Some(&json!({"automountServiceAccountToken": false}))));
        assert!(automount(
            &json!({"spec": {"automountServiceAccountToken": true}}),
            Some(&json!({"automountServiceAccountToken": false}))
        ));
        // The CA comes from the node where the namespace has no kube-root-ca.crt.
        let (cms, secrets) = (BTreeMap::new(), BTreeMap::new());
        let tok = |_: &TokenRequest<'_>| Ok("jwt".to_string());
        let src = sources(&cms, &secrets, &tok);
        let f = by_path(&files(&out, &out["spec"]["volumes"][0], &src).expect("projected").expect("files"));
        assert_eq!(f["token"].0, "jwt");
        assert_eq!(f["ca.crt"].0, "CA PEM");
        assert_eq!(f["namespace"].0, "shop");
    }

    #[test]
    fn writer_swaps_content_atomically_and_only_on_change() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let v = dir.path().join("vol");
        let f = |p: &str, d: &str, m: u32| File { path: p.into(), data: d.as_bytes().to_vec(), mode: m };
        assert!(write(&v, &[f("a", "1", 0o644), f("d/b", "2", 0o400)]).expect("write"));
        assert_eq!(std::fs::read_to_string(v.join("a")).expect("a"), "1");
        assert_eq!(std::fs::read_to_string(v.join("d/b")).expect("b"), "2");
        let mode = std::fs::metadata(v.join("d/b")).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
        assert!(!write(&v, &[f("d/b", "2", 0o400), f("a", "1", 0o644)]).expect("same"));
        assert!(write(&v, &[f("a", "changed", 0o644)]).expect("update"));
        assert_eq!(std::fs::read_to_string(v.join("a")).expect("a"), "changed");
        assert!(!v.join("d").exists());
        let dirs = std::fs::read_dir(&v).expect("list").flatten().filter(|e| e.file_name() != "..data").count();
        assert_eq!(dirs, 2, "one data dir and one link, the old data dir is gone");
        // Files of an older plain layout are replaced by the links.
        let plain = dir.path().join("plain");
        std::fs::create_dir_all(&plain).expect("mkdir");
        std::fs::write(plain.join("a"), "old").expect("write");
        assert!(write(&plain, &[f("a", "new", 0o644)]).expect("write"));
        assert_eq!(std::fs::read_to_string(plain.join("a")).expect("a"), "new");
    }
}
