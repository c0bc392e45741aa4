//! The audit log: one JSON line per mutating request (POST, PUT, PATCH, DELETE), in the shape
//! of kube-apiserver's `audit.k8s.io/v1` Event at level Metadata and stage ResponseComplete:
//! who (user, groups, the impersonated user), what (verb, resource, namespace, name), the
//! response code and when. The file is capped in size and rotated (`audit.log`,
//! `audit.log.1`, ... up to `max_files`), so it never fills the disk.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::auth::{Attributes, UserInfo};

/// Where and how much.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub path: PathBuf,
    /// Rotate once the file would grow past this.
    pub max_bytes: u64,
    /// Files kept, the current one included.
    pub max_files: u32,
}

struct Open {
    file: std::fs::File,
    size: u64,
}

/// An append-only audit log with size-capped rotation.
pub struct AuditLog {
    cfg: AuditConfig,
    file: Mutex<Option<Open>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

fn open(path: &Path) -> std::io::Result<Open> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        // A dir made 0755 by an older version is closed too.
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    }
    let file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    let size = file.metadata()?.len();
    Ok(Open { file, size })
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Whether requests with this method are audited (the mutating ones).
pub(crate) fn audited(method: &axum::http::Method) -> bool {
    use axum::http::Method;
    matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
}

/// What one audited request was.
pub(crate) struct Record<'a> {
    pub user: Option<&'a UserInfo>,
    /// The authenticated user when `user` is an impersonated one.
    pub authenticated: Option<&'a UserInfo>,
    pub attrs: &'a Attributes,
    pub uri: &'a str,
    pub source_ip: Option<std::net::IpAddr>,
    pub user_agent: &'a str,
    pub code: u16,
    pub received: jiff::Timestamp,
    /// Admission's annotations (`pod-security.kubernetes.io/audit-violations`, ...).
    pub annotations: &'a std::collections::BTreeMap<String, String>,
}

fn user_json(u: &UserInfo) -> Value {
    json!({"username": u.name, "groups": u.groups})
}

/// The Event of a record, at `now`.
pub(crate) fn event(r: &Record<'_>, now: jiff::Timestamp) -> Value {
    let ts = |t: jiff::Timestamp| t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    let mut e = json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": uuid::Uuid::new_v4().to_string(),
        "stage": "ResponseComplete",
        "requestURI": r.uri,
        "verb": r.attrs.verb,
        "user": match (r.authenticated, r.user) {
            (Some(a), _) => user_json(a),
            (None, Some(u)) => user_json(u),
            (None, None) => json!({"username": "system:anonymous", "groups": ["system:unauthenticated"]}),
        },
        "sourceIPs": r.source_ip.map(|ip| vec![ip.to_string()]).unwrap_or_default(),
        "userAgent": r.user_agent,
        "responseStatus": {"metadata": {}, "code": r.code},
        "requestReceivedTimestamp": ts(r.received),
        "stageTimestamp": ts(now),
    });
    if let (Some(_), Some(u)) = (r.authenticated, r.user) {
        e["impersonatedUser"] = user_json(u);
    }
    if !r.annotations.is_empty() {
        e["annotations"] = json!(r.annotations);
    }
    if r.attrs.resource_request {
        let mut o = json!({"resource": r.attrs.resource});
        for (k, v) in [
            ("namespace", &r.attrs.namespace),
            ("name", &r.attrs.name),
            ("apiGroup", &r.attrs.group),
            ("apiVersion", &r.attrs.version),
            ("subresource", &r.attrs.subresource),
        ] {
            if !v.is_empty() {
                o[k] = json!(v);
            }
        }
        e["objectRef"] = o;
    }
    e
}

impl AuditLog {
    pub fn new(cfg: AuditConfig) -> Self {
        AuditLog { cfg, file: Mutex::new(None) }
    }

    /// Appends one record; a write error is logged, never fails the request.
    pub(crate) fn record(&self, r: &Record<'_>) {
        let mut line = event(r, jiff::Timestamp::now()).to_string();
        line.push('\n');
        if let Err(e) = self.append(line.as_bytes()) {
            tracing::warn!(path = %self.cfg.path.display(), error = %e, "audit log not written");
        }
    }

    fn append(&self, line: &[u8]) -> std::io::Result<()> {
        let mut guard = self.file.lock().map_err(|_| std::io::Error::other("audit log lock poisoned"))?;
        if guard.is_none() {
            *guard = Some(open(&self.cfg.path)?);
        }
        let full = guard.as_ref().is_some_and(|o| o.size > 0 && o.size + line.len() as u64 > self.cfg.max_bytes);
        if full {
            *guard = None;
            self.rotate()?;
            *guard = Some(open(&self.cfg.path)?);
        }
        let Some(o) = guard.as_mut() else { return Ok(()) };
        o.file.write_all(line)?;
        o.size += line.len() as u64;
        Ok(())
    }

    /// audit.log.(n-1) -> .n, ..., audit.log -> audit.log.1; the oldest is dropped.
    fn rotate(&self) -> std::io::Result<()> {
        let p = &self.cfg.path;
        let keep = self.cfg.max_files.max(1);
        if keep == 1 {
            return std::fs::remove_file(p);
        }
        let _ = std::fs::remove_file(numbered(p, keep - 1));
        for n in (1..keep - 1).rev() {
            let from = numbered(p, n);
            if from.exists() {
                std::fs::rename(&from, numbered(p, n + 1))?;
            }
        }
        std::fs::rename(p, numbered(p, 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_request_rotated_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit/audit.log");
        let log = AuditLog::new(AuditConfig { path: path.clone(), max_bytes: 2000, max_files: 3 });
        let alice = UserInfo::new("alice", ["dev".to_string()]);
        let a = Attributes::resource("create", "apps", "deployments", "", "dev", "web");
        let r = Record {
            user: Some(&alice),
            authenticated: None,
            attrs: &a,
            uri: "/apis/apps/v1/namespaces/dev/deployments",
            source_ip: Some("10.0.0.9".parse().unwrap()),
            user_agent: "kubectl/v1.33.0",
            code: 201,
            received: jiff::Timestamp::now(),
            annotations: &std::collections::BTreeMap::new(),
        };
        log.record(&r);
        let text = std::fs::read_to_string(&path).unwrap();
        let e: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(e["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(e["kind"], "Event");
        assert_eq!(e["user"]["username"], "alice");
        assert_eq!(e["user"]["groups"], json!(["dev", "system:authenticated"]));
        assert_eq!(e["verb"], "create");
        assert_eq!(
            e["objectRef"],
            json!({"resource": "deployments", "namespace": "dev", "name": "web", "apiGroup": "apps"})
        );
        assert_eq!(e["responseStatus"]["code"], 201);
        assert!(e["requestReceivedTimestamp"].as_str().unwrap().ends_with('Z'));
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            assert_eq!(std::fs::metadata(dir.path().join("audit")).unwrap().permissions().mode() & 0o777, 0o700);
        }
        // Many more lines: never more than 3 files, none far above the cap.
        for _ in 0..100 {
            log.record(&r);
        }
        let files: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(files.len(), 3, "{files:?}");
        for f in files {
            assert!(std::fs::metadata(&f).unwrap().len() <= 2000, "{}", f.display());
        }
        // Impersonation names both.
        let admin = UserInfo::new("admin", ["system:masters".to_string()]);
        let e = event(&Record { user: Some(&alice), authenticated: Some(&admin), ..r }, jiff::Timestamp::now());
        assert_eq!(e["user"]["username"], "admin");
        assert_eq!(e["impersonatedUser"]["username"], "alice");
    }
}
