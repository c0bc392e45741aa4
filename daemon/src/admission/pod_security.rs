//! Pod Security Admission, as upstream's PodSecurity plugin: a namespace's labels
//! `pod-security.kubernetes.io/enforce|audit|warn` (each with a `-version`) name a level of the
//! Pod Security Standards (privileged, baseline, restricted). A pod that breaks the `enforce`
//! level is refused (`violates PodSecurity "restricted:latest": ...`); breaking the `warn`
//! level gives the client a `Warning:` header, breaking the `audit` level an annotation in the
//! audit log. Workload templates (Deployments, Jobs, ...) are checked for `warn` and `audit`
//! only: the pods they make meet `enforce`. Labels a namespace leaves out come from the
//! `[admission.pod_security]` defaults.
//!
//! All versions are checked with the latest checks; the version a label names is echoed in
//! the messages.
use std::collections::BTreeMap;

use serde_json::Value;
use shoal_kube::{Objects, Resource};

use super::{forbidden, notes, object_name, Error};

/// The label prefix.
pub(crate) const PREFIX: &str = "pod-security.kubernetes.io/";
const MODES: [&str; 3] = ["enforce", "audit", "warn"];

/// A Pod Security Standards level, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    pub(crate) fn parse(s: &str) -> Option<Level> {
        match s {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// `latest` or `v1.<minor>`.
pub(crate) fn valid_version(v: &str) -> bool {
    v == "latest"
        || v.strip_prefix("v1.").is_some_and(|m| !m.is_empty() && m.len() <= 4 && m.bytes().all(|b| b.is_ascii_digit()))
}

/// A level at a version, as messages name it (`restricted:latest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LevelVersion {
    pub level: Level,
    pub version: String,
}

impl std::fmt::Display for LevelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.level.name(), self.version)
    }
}

/// The three modes of a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Policy {
    pub enforce: LevelVersion,
    pub audit: LevelVersion,
    pub warn: LevelVersion,
}

/// A label with a bad value: (label key, value, why).
type LabelError = (String, String, &'static str);

/// The policy of a namespace with `labels`, the `defaults` (label key to value) filling the
/// labels it leaves out. Bad values are errors (a namespace write is refused with them; a pod in
/// a namespace that somehow has one is checked at `restricted`, as upstream).
pub(crate) fn policy(labels: &Value, defaults: &BTreeMap<String, String>) -> (Policy, Vec<LabelError>) {
    let mut errors = Vec::new();
    let mut get = |mode: &str| {
        let key = format!("{PREFIX}{mode}");
        let vkey = format!("{key}-version");
        let value = |k: &str| labels[k].as_str().map(String::from).or_else(|| defaults.get(k).cloned());
        let level = match value(&key) {
            None => Level::Privileged,
            Some(v) => Level::parse(&v).unwrap_or_else(|| {
                errors.push((key.clone(), v, "must be one of privileged, baseline, restricted"));
                Level::Restricted
            }),
        };
        let version = match value(&vkey) {
            None => "latest".to_string(),
            Some(v) if valid_version(&v) => v,
            Some(v) => {
                errors.push((vkey.clone(), v, "must be \"latest\" or \"v1.x\""));
                "latest".to_string()
            }
        };
        LevelVersion { level, version }
    };
    let (enforce, audit, warn) = (get(MODES[0]), get(MODES[1]), get(MODES[2]));
    (Policy { enforce, audit, warn }, errors)
}

/// One failed check: the reason and its detail (`allowPrivilegeEscalation != false`,
/// `container "x" must set securityContext.allowPrivilegeEscalation=false`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation {
    pub reason: String,
    pub detail: String,
}

/// `reason (detail), reason (detail)`, as upstream joins them.
fn join(vs: &[Violation]) -> String {
    vs.iter()
        .map(|v| if v.detail.is_empty() { v.reason.clone() } else { format!("{} ({})", v.reason, v.detail) })
        .collect::<Vec<_>>()
        .join(", ")
}

fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
}

/// `container "a"` / `containers "a", "b"`.
fn containers_phrase(names: &[String]) -> String {
    format!("{} {}", if names.len() == 1 { "container" } else { "containers" }, quoted(names))
}

fn pluralize<'a>(one: &'a str, many: &'a str, n: usize) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}

/// Every container of a pod spec (init, regular, ephemeral), in upstream's visiting order.
fn all_containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().map(|a| a.iter().collect::<Vec<_>>()).unwrap_or_default())
        .collect()
}

fn cname(c: &Value) -> String {
    c["name"].as_str().unwrap_or_default().to_string()
}

const BASELINE_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

const RESTRICTED_VOLUME_TYPES_ALLOWED: &[&str] =
    &["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"];

const SELINUX_TYPES: &[&str] = &["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"];

/// The checks of `level` on a pod's metadata and spec, failed ones only, in upstream's order
/// (by check id).
pub(crate) fn check(level: Level, meta: &Value, spec: &Value) -> Vec<Violation> {
    let mut out = Vec::new();
    if level == Level::Privileged {
        return out;
    }
    let restricted = level == Level::Restricted;
    let containers = all_containers(spec);
    let psc = &spec["securityContext"];
    let mut push = |reason: &str, detail: String| out.push(Violation { reason: reason.to_string(), detail });

    // allowPrivilegeEscalation (restricted)
    if restricted {
        let bad: Vec<String> = containers
            .iter()
            .filter(|c| c["securityContext"]["allowPrivilegeEscalation"].as_bool() != Some(false))
            .map(|c| cname(c))
            .collect();
        if !bad.is_empty() {
            push(
                "allowPrivilegeEscalation != false",
                format!("{} must set securityContext.allowPrivilegeEscalation=false", containers_phrase(&bad)),
            );
        }
    }

    // appArmorProfile (baseline)
    {
        let mut bad: Vec<String> = Vec::new();
        let unconfined = |v: &Value| v["appArmorProfile"]["type"].as_str() == Some("Unconfined");
        if unconfined(psc) {
            bad.push("pod must not set securityContext.appArmorProfile.type to \"Unconfined\"".into());
        }
        for c in &containers {
            if unconfined(&c["securityContext"]) {
                bad.push(format!(
                    "container {:?} must not set securityContext.appArmorProfile.type to \"Unconfined\"",
                    cname(c)
                ));
            }
        }
        if let Some(ann) = meta["annotations"].as_object() {
            for (k, v) in ann {
                let Some(v) = v.as_str() else { continue };
                if k.starts_with("container.apparmor.security.beta.kubernetes.io/")
                    && !(v.is_empty() || v == "runtime/default" || v.starts_with("localhost/"))
                {
                    bad.push(format!("{k}={v:?}"));
                }
            }
        }
        if !bad.is_empty() {
            let n = bad.len();
            push(pluralize("forbidden AppArmor profile", "forbidden AppArmor profiles", n), bad.join(", "));
        }
    }

    // capabilities: baseline (non-default added) or restricted (drop ALL, add at most NET_BIND_SERVICE)
    if restricted {
        let mut no_drop = Vec::new();
        let mut bad_add: Vec<String> = Vec::new();
        let mut bad_caps: Vec<String> = Vec::new();
        for c in &containers {
            let caps = &c["securityContext"]["capabilities"];
            let drops_all = caps["drop"].as_array().is_some_and(|d| d.iter().any(|x| x == "ALL"));
            if !drops_all {
                no_drop.push(cname(c));
            }
            let mut any = false;
            for a in caps["add"].as_array().into_iter().flatten() {
                let a = a.as_str().unwrap_or_default();
                if a != "NET_BIND_SERVICE" {
                    any = true;
                    if !bad_caps.iter().any(|b| b == a) {
                        bad_caps.push(a.to_string());
                    }
                }
            }
            if any {
                bad_add.push(cname(c));
            }
        }
        let mut details = Vec::new();
        if !no_drop.is_empty() {
            details
                .push(format!("{} must set securityContext.capabilities.drop=[\"ALL\"]", containers_phrase(&no_drop)));
        }
        if !bad_add.is_empty() {
            details.push(format!(
                "{} must not include {} in securityContext.capabilities.add",
                containers_phrase(&bad_add),
                quoted(&bad_caps)
            ));
        }
        if !details.is_empty() {
            push("unrestricted capabilities", details.join("; "));
        }
    } else {
        let mut bad_c = Vec::new();
        let mut bad_caps: Vec<String> = Vec::new();
        for c in &containers {
            let mut any = false;
            for a in c["securityContext"]["capabilities"]["add"].as_array().into_iter().flatten() {
                let a = a.as_str().unwrap_or_default();
                if !BASELINE_CAPS.contains(&a) {
                    any = true;
                    if !bad_caps.iter().any(|b| b == a) {
                        bad_caps.push(a.to_string());
                    }
                }
            }
            if any {
                bad_c.push(cname(c));
            }
        }
        if !bad_c.is_empty() {
            push(
                "non-default capabilities",
                format!(
                    "{} must not include {} in securityContext.capabilities.add",
                    containers_phrase(&bad_c),
                    quoted(&bad_caps)
                ),
            );
        }
    }

    // hostNamespaces
    {
        let set: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
            .iter()
            .filter(|k| spec[**k].as_bool() == Some(true))
            .map(|k| format!("{k}=true"))
            .collect();
        if !set.is_empty() {
            push("host namespaces", set.join(", "));
        }
    }

    // hostPathVolumes
    let volumes: Vec<&Value> = spec["volumes"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
    {
        let bad: Vec<String> = volumes.iter().filter(|v| !v["hostPath"].is_null()).map(|v| cname(v)).collect();
        if !bad.is_empty() {
            let n = bad.len();
            push("hostPath volumes", format!("{} {}", pluralize("volume", "volumes", n), quoted(&bad)));
        }
    }

    // hostPorts
    {
        let mut bad_c = Vec::new();
        let mut ports: Vec<String> = Vec::new();
        for c in &containers {
            let mut any = false;
            for p in c["ports"].as_array().into_iter().flatten() {
                if let Some(hp) = p["hostPort"].as_i64().filter(|h| *h != 0) {
                    any = true;
                    let hp = hp.to_string();
                    if !ports.contains(&hp) {
                        ports.push(hp);
                    }
                }
            }
            if any {
                bad_c.push(cname(c));
            }
        }
        if !bad_c.is_empty() {
            let n = bad_c.len();
            push(
                "hostPort",
                format!(
                    "{} {} {} {}",
                    containers_phrase(&bad_c),
                    pluralize("uses", "use", n),
                    pluralize("hostPort", "hostPorts", ports.len()),
                    ports.join(", ")
                ),
            );
        }
    }

    // privileged
    {
        let bad: Vec<String> = containers
            .iter()
            .filter(|c| c["securityContext"]["privileged"].as_bool() == Some(true))
            .map(|c| cname(c))
            .collect();
        if !bad.is_empty() {
            push("privileged", format!("{} must not set securityContext.privileged=true", containers_phrase(&bad)));
        }
    }

    // procMount
    {
        let bad: Vec<String> = containers
            .iter()
            .filter(|c| c["securityContext"]["procMount"].as_str().is_some_and(|p| p != "Default"))
            .map(|c| cname(c))
            .collect();
        if !bad.is_empty() {
            push(
                "procMount",
                format!("{} must not set securityContext.procMount to \"Unmasked\"", containers_phrase(&bad)),
            );
        }
    }

    // restrictedVolumes
    if restricted {
        let mut bad = Vec::new();
        let mut types: Vec<String> = Vec::new();
        for v in &volumes {
            let Some(o) = v.as_object() else { continue };
            let t: Vec<&String> =
                o.keys().filter(|k| *k != "name" && !RESTRICTED_VOLUME_TYPES_ALLOWED.contains(&k.as_str())).collect();
            if let Some(t) = t.first() {
                bad.push(cname(v));
                if !types.contains(t) {
                    types.push((*t).clone());
                }
            }
        }
        if !bad.is_empty() {
            let n = bad.len();
            push(
                "restricted volume types",
                format!(
                    "{} {} {} {} {}",
                    pluralize("volume", "volumes", n),
                    quoted(&bad),
                    pluralize("uses", "use", n),
                    pluralize("restricted volume type", "restricted volume types", types.len()),
                    quoted(&types)
                ),
            );
        }
    }

    // runAsNonRoot (restricted)
    if restricted {
        let pod_nonroot = psc["runAsNonRoot"].as_bool();
        let pod_user_ok = psc["runAsUser"].as_i64().is_some_and(|u| u > 0);
        let mut details = Vec::new();
        if pod_nonroot == Some(false) {
            details.push("pod must not set securityContext.runAsNonRoot=false".to_string());
        }
        let mut explicit_false = Vec::new();
        let mut implicit = Vec::new();
        for c in &containers {
            let sc = &c["securityContext"];
            match sc["runAsNonRoot"].as_bool() {
                Some(false) => explicit_false.push(cname(c)),
                Some(true) => {}
                None => {
                    let user_ok = sc["runAsUser"].as_i64().is_some_and(|u| u > 0);
                    if pod_nonroot != Some(true) && !pod_user_ok && !user_ok {
                        implicit.push(cname(c));
                    }
                }
            }
        }
        if !explicit_false.is_empty() {
            details.push(format!(
                "{} must not set securityContext.runAsNonRoot=false",
                containers_phrase(&explicit_false)
            ));
        }
        if !implicit.is_empty() && pod_nonroot != Some(false) {
            details.push(format!("pod or {} must set securityContext.runAsNonRoot=true", containers_phrase(&implicit)));
        }
        if !details.is_empty() {
            push("runAsNonRoot != true", details.join("; "));
        }
    }

    // runAsUser (restricted)
    if restricted {
        let pod = psc["runAsUser"].as_i64() == Some(0);
        let bad: Vec<String> = containers
            .iter()
            .filter(|c| c["securityContext"]["runAsUser"].as_i64() == Some(0))
            .map(|c| cname(c))
            .collect();
        let who = match (pod, bad.is_empty()) {
            (true, true) => Some("pod".to_string()),
            (true, false) => Some(format!("pod and {}", containers_phrase(&bad))),
            (false, false) => Some(containers_phrase(&bad)),
            (false, true) => None,
        };
        if let Some(who) = who {
            push("runAsUser=0", format!("{who} must not set runAsUser=0"));
        }
    }

    // seLinuxOptions
    {
        let bad_opts = |o: &Value| -> Vec<String> {
            let mut v = Vec::new();
            if let Some(t) = o["type"].as_str().filter(|t| !SELINUX_TYPES.contains(t)) {
                v.push(format!("type {t:?}"));
            }
            if let Some(u) = o["user"].as_str().filter(|u| !u.is_empty()) {
                v.push(format!("user {u:?}"));
            }
            if let Some(r) = o["role"].as_str().filter(|r| !r.is_empty()) {
                v.push(format!("role {r:?}"));
            }
            v
        };
        let mut details = Vec::new();
        let p = bad_opts(&psc["seLinuxOptions"]);
        if !p.is_empty() {
            details.push(format!("pod set forbidden securityContext.seLinuxOptions: {}", p.join(", ")));
        }
        for c in &containers {
            let b = bad_opts(&c["securityContext"]["seLinuxOptions"]);
            if !b.is_empty() {
                details.push(format!(
                    "container {:?} set forbidden securityContext.seLinuxOptions: {}",
                    cname(c),
                    b.join(", ")
                ));
            }
        }
        if !details.is_empty() {
            push("seLinuxOptions", details.join("; "));
        }
    }

    // seccompProfile: baseline (no Unconfined) or restricted (RuntimeDefault or Localhost set)
    {
        let ty = |v: &Value| v["seccompProfile"]["type"].as_str().map(String::from);
        let pod_ty = ty(psc);
        let mut details = Vec::new();
        if pod_ty.as_deref() == Some("Unconfined") {
            details.push("pod must not set securityContext.seccompProfile.type to \"Unconfined\"".to_string());
        }
        let mut bad = Vec::new();
        let mut unset = Vec::new();
        for c in &containers {
            match ty(&c["securityContext"]).as_deref() {
                Some("Unconfined") => bad.push(cname(c)),
                Some(_) => {}
                None => unset.push(cname(c)),
            }
        }
        if !bad.is_empty() {
            details.push(format!(
                "{} must not set securityContext.seccompProfile.type to \"Unconfined\"",
                containers_phrase(&bad)
            ));
        }
        if restricted && pod_ty.is_none() && !unset.is_empty() {
            details.push(format!(
                "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                containers_phrase(&unset)
            ));
        }
        if !details.is_empty() {
            push("seccompProfile", details.join("; "));
        }
    }

    // sysctls
    {
        let bad: Vec<String> = psc["sysctls"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str())
            .filter(|n| !SAFE_SYSCTLS.contains(n))
            .map(String::from)
            .collect();
        if !bad.is_empty() {
            push("forbidden sysctls", bad.join(", "));
        }
    }
    out
}

/// The pod metadata and spec an object of `res` carries: a pod's own, a workload's template.
fn pod_parts<'a>(res: &Resource, obj: &'a Value) -> Option<(&'a Value, &'a Value, bool)> {
    match (res.group.as_str(), res.kind.as_str()) {
        ("", "Pod") => Some((&obj["metadata"], &obj["spec"], true)),
        ("", "PodTemplate") => Some((&obj["template"]["metadata"], &obj["template"]["spec"], false)),
        ("", "ReplicationController")
        | ("apps", "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet")
        | ("batch", "Job") => Some((&obj["spec"]["template"]["metadata"], &obj["spec"]["template"]["spec"], false)),
        ("batch", "CronJob") => Some((
            &obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"],
            &obj["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            false,
        )),
        _ => None,
    }
}

/// Whether an update changes what the checks look at: upstream evaluates a pod update only
/// when a container's image (or the set of containers) changed, a workload's only when its
/// template changed.
fn significant_update(is_pod: bool, res: &Resource, obj: &Value, old: &Value) -> bool {
    let (Some((m, s, _)), Some((om, os, _))) = (pod_parts(res, obj), pod_parts(res, old)) else { return false };
    if !is_pod {
        return m != om || s != os;
    }
    let images = |s: &Value| -> Vec<(String, String)> {
        all_containers(s).iter().map(|c| (cname(c), c["image"].as_str().unwrap_or_default().to_string())).collect()
    };
    images(s) != images(os)
}

async fn namespace_labels(objects: &Objects, ns: &str) -> Result<Value, Error> {
    let res = shoal_kube::resources::lookup("", "namespaces");
    match objects.get(&res, None, ns).await {
        Ok(Some(n)) => Ok(n["metadata"]["labels"].clone()),
        Ok(None) => Ok(Value::Null),
        Err(e) => Err(Error::Read { resource: "namespaces".into(), source: Box::new(e) }),
    }
}

/// Pod Security for an object of `res` being created (`old` None) or updated in `ns`:
/// refuses a pod that breaks `enforce`, warns and annotates the audit record for `warn` and
/// `audit`; for a Namespace, refuses bad label values and warns about existing pods that break
/// a new `enforce` level.
pub(crate) async fn admit(
    objects: &Objects,
    defaults: &BTreeMap<String, String>,
    res: &Resource,
    ns: &str,
    obj: &Value,
    old: Option<&Value>,
) -> Result<(), Error> {
    admit_as(objects, defaults, res, ns, obj, old, None).await
}

/// Which exemption of `[admission.pod_security]` (carried in `defaults` under `exempt/...`,
/// see `PodSecurityDefaults::labels`) spares this request: upstream's audit annotation value.
fn exemption(defaults: &BTreeMap<String, String>, ns: &str, user: Option<&str>, spec: &Value) -> Option<&'static str> {
    let listed = |key: &str, name: &str| defaults.get(key).is_some_and(|v| v.lines().any(|l| l == name));
    if listed("exempt/namespaces", ns) {
        return Some("namespace");
    }
    if user.is_some_and(|u| listed("exempt/users", u)) {
        return Some("user");
    }
    if spec["runtimeClassName"].as_str().is_some_and(|rc| listed("exempt/runtime-classes", rc)) {
        return Some("runtimeClass");
    }
    None
}

/// [`admit`] for a request of `user` (exempt users are not checked).
pub(crate) async fn admit_as(
    objects: &Objects,
    defaults: &BTreeMap<String, String>,
    res: &Resource,
    ns: &str,
    obj: &Value,
    old: Option<&Value>,
    user: Option<&str>,
) -> Result<(), Error> {
    if res.group.is_empty() && res.kind == "Namespace" {
        return admit_namespace(objects, defaults, obj, old).await;
    }
    let Some((meta, spec, is_pod)) = pod_parts(res, obj) else { return Ok(()) };
    if let Some(old) = old {
        if !significant_update(is_pod, res, obj, old) {
            return Ok(());
        }
    }
    if let Some(why) = exemption(defaults, ns, user, spec) {
        notes::audit_annotation(&format!("{PREFIX}exempt"), why);
        return Ok(());
    }
    let labels = namespace_labels(objects, ns).await?;
    let (policy, errors) = policy(&labels, defaults);
    let mut enforce = policy.enforce.clone();
    if !errors.is_empty() {
        enforce.level = Level::Restricted;
    }
    notes::audit_annotation(&format!("{PREFIX}enforce-policy"), &enforce.to_string());
    let enforce_v = check(enforce.level, meta, spec);
    if !enforce_v.is_empty() {
        if is_pod {
            return Err(forbidden(
                res,
                obj,
                &format!("violates PodSecurity {:?}: {}", enforce.to_string(), join(&enforce_v)),
            ));
        }
        // A workload is not refused: its pods will be. The client hears it now.
        notes::warn(format!("would violate PodSecurity {:?}: {}", enforce.to_string(), join(&enforce_v)));
    }
    let audit_v = if policy.audit == enforce { enforce_v.clone() } else { check(policy.audit.level, meta, spec) };
    if !audit_v.is_empty() {
        notes::audit_annotation(
            &format!("{PREFIX}audit-violations"),
            &format!("would violate PodSecurity {:?}: {}", policy.audit.to_string(), join(&audit_v)),
        );
    }
    let warn_v = if policy.warn == enforce { enforce_v } else { check(policy.warn.level, meta, spec) };
    if !warn_v.is_empty() {
        notes::warn(format!("would violate PodSecurity {:?}: {}", policy.warn.to_string(), join(&warn_v)));
    }
    Ok(())
}

async fn admit_namespace(
    objects: &Objects,
    defaults: &BTreeMap<String, String>,
    obj: &Value,
    old: Option<&Value>,
) -> Result<(), Error> {
    let labels = &obj["metadata"]["labels"];
    let (_, errors) = policy(labels, &BTreeMap::new());
    if !errors.is_empty() {
        let causes: Vec<String> =
            errors.iter().map(|(k, v, why)| format!("metadata.labels[{k}]: Invalid value: {v:?}: {why}")).collect();
        let causes = if causes.len() == 1 { causes[0].clone() } else { format!("[{}]", causes.join(", ")) };
        return Err(Error::Invalid { message: format!("namespaces {:?} is invalid: {causes}", object_name(obj)) });
    }
    let Some(old) = old else { return Ok(()) };
    let new = policy(labels, defaults).0.enforce;
    let was = policy(&old["metadata"]["labels"], defaults).0.enforce;
    if new == was || new.level == Level::Privileged {
        return Ok(());
    }
    let name = object_name(obj);
    let pods = shoal_kube::resources::lookup("", "pods");
    let list = match objects.list(&pods, Some(name)).await {
        Ok((l, _)) => l,
        Err(e) => return Err(Error::Read { resource: "pods".into(), source: Box::new(e) }),
    };
    let mut lines = Vec::new();
    for p in &list {
        let v = check(new.level, &p["metadata"], &p["spec"]);
        if !v.is_empty() {
            let reasons: Vec<&str> = v.iter().map(|v| v.reason.as_str()).collect();
            lines.push(format!("{}: {}", object_name(p), reasons.join(", ")));
        }
    }
    if !lines.is_empty() {
        notes::warn(format!(
            "existing pods in namespace {name:?} violate the new PodSecurity enforce level {:?}",
            new.to_string()
        ));
        for l in lines.into_iter().take(20) {
            notes::warn(l);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use shoal_kube::resources::lookup;

    fn spec(c: Value) -> Value {
        json!({"containers": [c]})
    }

    fn reasons(level: Level, meta: &Value, spec: &Value) -> String {
        join(&check(level, meta, spec))
    }

    #[test]
    fn restricted_names_what_a_plain_pod_lacks_in_upstream_words() {
        let s = spec(json!({"name": "x", "image": "busybox"}));
        assert_eq!(
            reasons(Level::Restricted, &json!({}), &s),
            "allowPrivilegeEscalation != false (container \"x\" must set securityContext.allowPrivilegeEscalation=false), \
             unrestricted capabilities (container \"x\" must set securityContext.capabilities.drop=[\"ALL\"]), \
             runAsNonRoot != true (pod or container \"x\" must set securityContext.runAsNonRoot=true), \
             seccompProfile (pod or container \"x\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
        );
        assert_eq!(reasons(Level::Baseline, &json!({}), &s), "");
        assert_eq!(reasons(Level::Privileged, &json!({}), &s), "");
        let good = json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "x", "image": "busybox", "securityContext": {"allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
            "volumes": [{"name": "d", "emptyDir": {}}, {"name": "c", "configMap": {"name": "c"}}]});
        assert_eq!(reasons(Level::Restricted, &json!({}), &good), "");
    }

    #[test]
    fn baseline_checks() {
        let s = json!({"hostNetwork": true, "hostPID": true,
            "securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}, {"name": "net.ipv4.tcp_syncookies", "value": "1"}],
                "seccompProfile": {"type": "Unconfined"}},
            "containers": [
                {"name": "a", "image": "i", "securityContext": {"privileged": true, "capabilities": {"add": ["NET_ADMIN", "CHOWN"]}},
                 "ports": [{"containerPort": 80, "hostPort": 80}]},
                {"name": "b", "image": "i", "securityContext": {"privileged": true, "procMount": "Unmasked",
                 "seLinuxOptions": {"type": "spc_t"}}}],
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}]});
        let meta = json!({"annotations": {"container.apparmor.security.beta.kubernetes.io/a": "unconfined"}});
        assert_eq!(
            reasons(Level::Baseline, &meta, &s),
            "forbidden AppArmor profile (container.apparmor.security.beta.kubernetes.io/a=\"unconfined\"), \
             non-default capabilities (container \"a\" must not include \"NET_ADMIN\" in securityContext.capabilities.add), \
             host namespaces (hostNetwork=true, hostPID=true), hostPath volumes (volume \"h\"), \
             hostPort (container \"a\" uses hostPort 80), \
             privileged (containers \"a\", \"b\" must not set securityContext.privileged=true), \
             procMount (container \"b\" must not set securityContext.procMount to \"Unmasked\"), \
             seLinuxOptions (container \"b\" set forbidden securityContext.seLinuxOptions: type \"spc_t\"), \
             seccompProfile (pod must not set securityContext.seccompProfile.type to \"Unconfined\"), \
             forbidden sysctls (kernel.msgmax)"
        );
        let r = reasons(Level::Restricted, &json!({}), &s);
        assert!(r.contains("restricted volume types (volume \"h\" uses restricted volume type \"hostPath\")"), "{r}");
        assert!(r.contains("must not include \"NET_ADMIN\", \"CHOWN\" in securityContext.capabilities.add"), "{r}");
    }

    #[test]
    fn policy_from_labels_and_defaults() {
        let defaults: BTreeMap<String, String> =
            [(format!("{PREFIX}enforce"), "baseline".to_string())].into_iter().collect();
        let (p, errors) = policy(
            &json!({format!("{PREFIX}warn"): "restricted", format!("{PREFIX}warn-version"): "v1.31"}),
            &defaults,
        );
        assert!(errors.is_empty());
        assert_eq!(p.enforce.to_string(), "baseline:latest");
        assert_eq!(p.warn.to_string(), "restricted:v1.31");
        assert_eq!(p.audit.to_string(), "privileged:latest");
        let (p, errors) =
            policy(&json!({format!("{PREFIX}enforce"): "strict", format!("{PREFIX}enforce-version"): "2"}), &defaults);
        assert_eq!(errors.len(), 2);
        assert_eq!(p.enforce.level, Level::Restricted, "a bad label is read as restricted");
    }

    async fn ns(objects: &Objects, name: &str, labels: Value) {
        objects
            .create(&lookup("", "namespaces"), None, json!({"metadata": {"name": name, "labels": labels}}))
            .await
            .unwrap();
    }

    /// `[admission.pod_security]` exemptions: a namespace, a user, a runtime class spare a
    /// privileged pod under a cluster-wide `restricted`; anything else is still refused.
    #[tokio::test]
    async fn exemptions_spare_namespaces_users_and_runtime_classes() {
        let objects = Objects::new(shoal_store::Store::in_memory());
        // As `[admission.pod_security]` hands them over (config.rs, PodSecurityDefaults::labels).
        let defaults: BTreeMap<String, String> = [
            (format!("{PREFIX}enforce"), "restricted"),
            ("exempt/namespaces".to_string(), "other\nkube-system"),
            ("exempt/users".to_string(), "ops"),
            ("exempt/runtime-classes".to_string(), "kata"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect();
        let pods = lookup("", "pods");
        let privileged = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i",
            "securityContext": {"privileged": true}}]}});
        for (ns, user, pod, why) in [
            ("kube-system", None, privileged.clone(), "namespace"),
            ("team", Some("ops"), privileged.clone(), "user"),
            (
                "team",
                Some("dev"),
                json!({"metadata": {"name": "p"}, "spec": {"runtimeClassName": "kata",
                "containers": privileged["spec"]["containers"].clone()}}),
                "runtimeClass",
            ),
        ] {
            let (r, n) = notes::collect(admit_as(&objects, &defaults, &pods, ns, &pod, None, user)).await;
            assert!(r.is_ok(), "{ns} {user:?}: {r:?}");
            assert_eq!(n.audit[&format!("{PREFIX}exempt")], why);
        }
        match admit_as(&objects, &defaults, &pods, "team", &privileged, None, Some("dev")).await {
            Err(Error::Forbidden { message }) => {
                assert!(message.contains("violates PodSecurity \"restricted:latest\""), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn enforce_refuses_warn_and_audit_note() {
        let objects = Objects::new(shoal_store::Store::in_memory());
        ns(
            &objects,
            "s",
            json!({format!("{PREFIX}enforce"): "baseline", format!("{PREFIX}warn"): "restricted",
            format!("{PREFIX}audit"): "restricted"}),
        )
        .await;
        let pods = lookup("", "pods");
        let none = BTreeMap::new();
        let plain = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let (r, n) = notes::collect(admit(&objects, &none, &pods, "s", &plain, None)).await;
        r.unwrap();
        assert_eq!(n.warnings.len(), 1);
        assert!(n.warnings[0]
            .starts_with("would violate PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false"));
        assert_eq!(n.audit[&format!("{PREFIX}enforce-policy")], "baseline:latest");
        assert_eq!(n.audit[&format!("{PREFIX}audit-violations")], n.warnings[0]);

        let privileged = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i",
            "securityContext": {"privileged": true}}]}});
        match admit(&objects, &none, &pods, "s", &privileged, None).await {
            Err(Error::Forbidden { message }) => assert_eq!(
                message,
                "pods \"p\" is forbidden: violates PodSecurity \"baseline:latest\": privileged (container \"c\" must not set securityContext.privileged=true)"
            ),
            other => panic!("{other:?}"),
        }
        // A Deployment's template is only warned about, at the enforce level too.
        let deploys = lookup("apps", "deployments");
        let d = json!({"metadata": {"name": "d"}, "spec": {"template": {"spec": privileged["spec"].clone()}}});
        let (r, n) = notes::collect(admit(&objects, &none, &deploys, "s", &d, None)).await;
        r.unwrap();
        assert!(
            n.warnings.iter().any(|w| w.starts_with("would violate PodSecurity \"baseline:latest\": privileged")),
            "{n:?}"
        );
        // An update that changes no image is not evaluated (upstream); one that does is.
        let running = plain.clone();
        assert!(admit(&objects, &none, &pods, "s", &privileged, Some(&running)).await.is_ok());
        let mut new_image = privileged.clone();
        new_image["spec"]["containers"][0]["image"] = json!("j");
        assert!(matches!(
            admit(&objects, &none, &pods, "s", &new_image, Some(&privileged)).await,
            Err(Error::Forbidden { .. })
        ));
        // The configured default applies where a namespace sets no label.
        ns(&objects, "open", json!({})).await;
        assert!(admit(&objects, &none, &pods, "open", &privileged, None).await.is_ok());
        let defaults: BTreeMap<String, String> =
            [(format!("{PREFIX}enforce"), "baseline".to_string())].into_iter().collect();
        assert!(matches!(
            admit(&objects, &defaults, &pods, "open", &privileged, None).await,
            Err(Error::Forbidden { .. })
        ));
    }

    #[tokio::test]
    async fn namespace_labels_are_checked_and_tightening_warns_about_running_pods() {
        let objects = Objects::new(shoal_store::Store::in_memory());
        let nss = lookup("", "namespaces");
        let none = BTreeMap::new();
        let bad = json!({"metadata": {"name": "x", "labels": {format!("{PREFIX}enforce"): "strict"}}});
        match admit(&objects, &none, &nss, "", &bad, None).await {
            Err(Error::Invalid { message }) => assert_eq!(
                message,
                "namespaces \"x\" is invalid: metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: \"strict\": must be one of privileged, baseline, restricted"
            ),
            other => panic!("{other:?}"),
        }
        ns(&objects, "x", json!({})).await;
        let pod = json!({"metadata": {"name": "root"}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        objects.create(&lookup("", "pods"), Some("x"), pod).await.unwrap();
        let old = json!({"metadata": {"name": "x"}});
        let new = json!({"metadata": {"name": "x", "labels": {format!("{PREFIX}enforce"): "restricted"}}});
        let (r, n) = notes::collect(admit(&objects, &none, &nss, "", &new, Some(&old))).await;
        r.unwrap();
        assert_eq!(
            n.warnings,
            vec![
                "existing pods in namespace \"x\" violate the new PodSecurity enforce level \"restricted:latest\"".to_string(),
                "root: allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != true, seccompProfile".to_string()
            ]
        );
    }
}
