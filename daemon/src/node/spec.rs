//! A Pod's container as an OCI runtime spec: the process (command, args, env, cwd, user) from
//! the container and its image, the pod sandbox's namespaces, the pod's files and volumes as
//! mounts, and requests/limits as cgroup settings.
use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

/// What a container is started from besides its Pod.
pub struct ContainerInput<'a> {
    pub pod: &'a Value,
    pub container: &'a Value,
    pub image: &'a shoal_images::ImageConfig,
    pub rootfs: &'a Path,
    pub netns: &'a Path,
    pub ipcns: &'a Path,
    pub utsns: &'a Path,
    /// Environment resolved from the pod (env, envFrom, fieldRefs, Service links).
    pub env: Vec<String>,
    /// (source on the host, destination, read-only).
    pub mounts: Vec<(String, String, bool)>,
    pub cgroups_path: String,
    /// The user from the image, resolved against the rootfs' /etc/passwd.
    pub uid: u32,
    pub gid: u32,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// The process arguments as Kubernetes computes them from command/args and the image's
/// ENTRYPOINT/CMD.
pub fn process_args(container: &Value, image: &shoal_images::ImageConfig) -> Vec<String> {
    let command = strings(&container["command"]);
    let args = strings(&container["args"]);
    match (command.is_empty(), args.is_empty()) {
        (false, _) => command.into_iter().chain(args).collect(),
        (true, false) => image.entrypoint.iter().cloned().chain(args).collect(),
        (true, true) => image.entrypoint.iter().chain(image.cmd.iter()).cloned().collect(),
    }
}

/// Parses a Kubernetes quantity of CPU into millicores.
pub use shoal_kube::quantity::millis as cpu_millis;

/// Parses a Kubernetes quantity of bytes.
pub use shoal_kube::quantity::bytes;

/// The `linux.resources` of a container, as the kubelet sets them on cgroup v1.
pub fn resources(container: &Value) -> Value {
    let res = &container["resources"];
    let req_cpu = res["requests"]["cpu"].as_str().and_then(cpu_millis);
    let lim_cpu = res["limits"]["cpu"].as_str().and_then(cpu_millis);
    let lim_mem = res["limits"]["memory"].as_str().and_then(bytes);
    // Requests default to limits when only limits are set.
    let shares = req_cpu.or(lim_cpu).map(|m| (m * 1024 / 1000).max(2)).unwrap_or(2);
    let mut cpu = json!({"shares": shares});
    if let Some(l) = lim_cpu {
        cpu["quota"] = json!((l * 100).max(1000));
        cpu["period"] = json!(100_000);
    }
    let mut out = json!({"cpu": cpu, "pids": {"limit": 4096}});
    if let Some(m) = lim_mem {
        out["memory"] = json!({"limit": m});
    }
    out
}

/// Builds the OCI spec (config.json) of a container.
pub fn build(input: &ContainerInput<'_>) -> Value {
    let mut base = shoal_runtime::default_spec(input.rootfs, Vec::new());
    // seccompProfile RuntimeDefault gets containerd's default profile; no profile or
    // Unconfined runs unconfined, as a kubelet with SeccompDefault off does.
    let profile = |v: &Value| v["securityContext"]["seccompProfile"]["type"].as_str().map(String::from);
    let privileged = input.container["securityContext"]["privileged"].as_bool() == Some(true);
    if !privileged
        && profile(input.container).or_else(|| profile(&input.pod["spec"])).as_deref() == Some("RuntimeDefault")
    {
        shoal_runtime::set_runtime_default(&mut base);
    }
    let mut spec = serde_json::to_value(&base).unwrap_or_else(|_| json!({}));
    let c = input.container;
    let args = process_args(c, input.image);
    let cwd = c["workingDir"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(String::from)
        .or_else(|| Some(input.image.working_dir.clone()).filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "/".into());
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for e in input.image.env.iter().chain(input.env.iter()) {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        if env.insert(k.to_string(), v.to_string()).is_none() {
            order.push(k.to_string());
        }
    }
    if !env.contains_key("PATH") {
        env.insert("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        order.insert(0, "PATH".into());
    }
    let env: Vec<String> = order.iter().map(|k| format!("{k}={}", env[k])).collect();
    let pod_name = input.pod["metadata"]["name"].as_str().unwrap_or("pod");
    // `spec.hostname` when set (kubelet's rule), else the pod's name.
    let hostname = input.pod["spec"]["hostname"].as_str().filter(|h| !h.is_empty()).unwrap_or(pod_name);
    spec["hostname"] = json!(hostname);
    spec["process"]["args"] = json!(args);
    spec["process"]["env"] = json!(env);
    spec["process"]["cwd"] = json!(cwd);
    spec["process"]["user"] = json!({"uid": input.uid, "gid": input.gid});
    spec["process"]["terminal"] = json!(c["tty"].as_bool().unwrap_or(false));
    if c["securityContext"]["privileged"].as_bool() == Some(true) {
        spec["linux"]["maskedPaths"] = json!([]);
        spec["linux"]["readonlyPaths"] = json!([]);
    }
    spec["root"] = json!({"path": input.rootfs, "readonly": c["securityContext"]["readOnlyRootFilesystem"].as_bool().unwrap_or(false)});
    apply_security(&mut spec, input.pod, c);
    let host_network = input.pod["spec"]["hostNetwork"].as_bool() == Some(true);
    let host_pid = input.pod["spec"]["hostPID"].as_bool() == Some(true);
    // hostIPC: no ipc namespace of its own, so the host's.
    let host_ipc = input.pod["spec"]["hostIPC"].as_bool() == Some(true);
    let mut namespaces = vec![json!({"type": "mount"})];
    if !host_ipc {
        namespaces.push(json!({"type": "ipc", "path": input.ipcns}));
    }
    if !host_pid {
        namespaces.push(json!({"type": "pid"}));
    }
    if !host_network {
        namespaces.push(json!({"type": "network", "path": input.netns}));
        namespaces.push(json!({"type": "uts", "path": input.utsns}));
    }
    spec["linux"]["namespaces"] = json!(namespaces);
    spec["linux"]["resources"] = resources(c);
    if privileged {
        // The host's devices, and a device cgroup that allows them all (as upstream).
        spec["linux"]["devices"] =
            serde_json::to_value(shoal_runtime::host_devices(Path::new("/dev"))).unwrap_or_default();
        spec["linux"]["resources"]["devices"] = json!([{"allow": true, "type": "a", "access": "rwm"}]);
    }
    spec["linux"]["cgroupsPath"] = json!(input.cgroups_path);
    let mut mounts = spec["mounts"].as_array().cloned().unwrap_or_default();
    for (src, dst, ro) in &input.mounts {
        let mut opts = vec!["rbind", "rprivate"];
        if *ro {
            opts.push("ro");
        }
        mounts.retain(|m| m["destination"].as_str() != Some(dst.as_str()));
        mounts.push(json!({"destination": dst, "type": "bind", "source": src, "options": opts}));
    }
    spec["mounts"] = json!(mounts);
    spec
}

/// Sysctls the kubelet allows without `--allowed-unsafe-sysctls` (namespaced to the pod).
pub const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

fn cap_name(n: &str) -> String {
    let up = n.to_ascii_uppercase();
    if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    }
}

/// The securityContext fields the node cannot honour, as the kubelet's refusal
/// (CreateContainerConfigError with this message): unsafe or malformed sysctls, unknown
/// capabilities.
pub fn check_security(pod: &Value, container: &Value) -> Result<(), String> {
    for s in pod["spec"]["securityContext"]["sysctls"].as_array().into_iter().flatten() {
        let name = s["name"].as_str().unwrap_or_default();
        if !SAFE_SYSCTLS.contains(&name) {
            return Err(format!(
                "forbidden sysctl: \"{name}\" not allowlisted (shoal allows only the kubelet's safe sysctls)"
            ));
        }
        if s["value"].as_str().is_none() {
            return Err(format!("sysctl \"{name}\" has no value"));
        }
    }
    let known = shoal_runtime::all_capability_names();
    let caps = &container["securityContext"]["capabilities"];
    for list in ["add", "drop"] {
        for n in caps[list].as_array().into_iter().flatten() {
            let n = n.as_str().unwrap_or_default();
            if n != "ALL" && !known.contains(&cap_name(n).as_str()) {
                return Err(format!("unknown capability {n:?} in securityContext.capabilities.{list}"));
            }
        }
    }
    Ok(())
}

/// capabilities (add/drop, ALL), privileged (every capability), allowPrivilegeEscalation
/// (no_new_privs), supplementalGroups and fsGroup (extra groups of the process), sysctls.
fn apply_security(spec: &mut Value, pod: &Value, c: &Value) {
    let sc = &c["securityContext"];
    let privileged = sc["privileged"].as_bool() == Some(true);
    let mut set: Vec<String> = strings(&spec["process"]["capabilities"]["bounding"]);
    let all: Vec<String> = shoal_runtime::current_capability_names().into_iter().map(String::from).collect();
    if privileged {
        set = all.clone();
    } else {
        // As containerd: ALL first, then the named adds, then the named drops.
        let add: Vec<String> = strings(&sc["capabilities"]["add"]);
        let drop: Vec<String> = strings(&sc["capabilities"]["drop"]);
        if add.iter().any(|a| a == "ALL") {
            set = all.clone();
        }
        if drop.iter().any(|d| d == "ALL") {
            set.clear();
        }
        for a in add.iter().filter(|a| *a != "ALL") {
            let a = cap_name(a);
            if !set.contains(&a) {
                set.push(a);
            }
        }
        for d in drop.iter().filter(|d| *d != "ALL") {
            let d = cap_name(d);
            set.retain(|x| *x != d);
        }
    }
    for which in ["bounding", "effective", "permitted"] {
        spec["process"]["capabilities"][which] = json!(set);
    }
    // shoal sets no_new_privs unless escalation is asked for (privileged, or
    // allowPrivilegeEscalation: true).
    let escalate = privileged || sc["allowPrivilegeEscalation"].as_bool() == Some(true);
    spec["process"]["noNewPrivileges"] = json!(!escalate);
    let psc = &pod["spec"]["securityContext"];
    let mut groups: Vec<u64> =
        psc["supplementalGroups"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect();
    if let Some(g) = psc["fsGroup"].as_u64() {
        groups.push(g);
    }
    groups.sort_unstable();
    groups.dedup();
    if !groups.is_empty() {
        spec["process"]["user"]["additionalGids"] = json!(groups);
    }
    let mut sysctl = serde_json::Map::new();
    for s in psc["sysctls"].as_array().into_iter().flatten() {
        if let (Some(n), Some(v)) = (s["name"].as_str(), s["value"].as_str()) {
            if SAFE_SYSCTLS.contains(&n) {
                sysctl.insert(n.to_string(), json!(v));
            }
        }
    }
    if !sysctl.is_empty() {
        spec["linux"]["sysctl"] = Value::Object(sysctl);
    }
}

/// The user of a container: runAsUser/runAsGroup of the container, else of the pod, else the
/// image's user (with its primary group).
pub fn run_as(pod: &Value, container: &Value, image_user: (u32, u32)) -> (u32, u32) {
    let field =
        |f: &str| container["securityContext"][f].as_u64().or_else(|| pod["spec"]["securityContext"][f].as_u64());
    let uid = field("runAsUser").map_or(image_user.0, |u| u as u32);
    let gid =
        field("runAsGroup").map(|g| g as u32).unwrap_or(if field("runAsUser").is_some() { 0 } else { image_user.1 });
    (uid, gid)
}

/// Linux major and minor numbers of a device number (glibc's `gnu_dev_major/minor`).
pub fn dev_major_minor(rdev: u64) -> (i64, i64) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major as i64, minor as i64)
}

/// Gives the container a host device node at the same path: the node in its /dev
/// (`linux.devices`) and the device cgroup rule that allows it.
pub fn add_device(spec: &mut Value, path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(path)?;
    let kind = if meta.file_type().is_char_device() {
        "c"
    } else if meta.file_type().is_block_device() {
        "b"
    } else {
        return Err(std::io::Error::other(format!("{} is not a device node", path.display())));
    };
    let (major, minor) = dev_major_minor(meta.rdev());
    let node = json!({
        "path": path, "type": kind, "major": major, "minor": minor,
        "fileMode": meta.mode() & 0o7777, "uid": meta.uid(), "gid": meta.gid(),
    });
    let rule = json!({"allow": true, "type": kind, "major": major, "minor": minor, "access": "rwm"});
    match spec["linux"]["devices"].as_array_mut() {
        Some(list) => list.push(node),
        None => spec["linux"]["devices"] = json!([node]),
    }
    match spec["linux"]["resources"]["devices"].as_array_mut() {
        Some(list) => list.push(rule),
        None => spec["linux"]["resources"]["devices"] = json!([rule]),
    }
    Ok(())
}

/// Resolves an image `USER` (`name`, `uid`, `name:group`, `uid:gid`) against the rootfs.
pub fn resolve_user(user: &str, rootfs: &Path) -> (u32, u32) {
    if user.is_empty() {
        return (0, 0);
    }
    let (u, g) = user.split_once(':').map(|(u, g)| (u, Some(g))).unwrap_or((user, None));
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    let lookup = |file: &str, name: &str, field: usize| -> Option<(u32, u32)> {
        file.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name) && f.len() > field)
                .then(|| Some((f[2].parse().ok()?, f.get(3).and_then(|g| g.parse().ok()).unwrap_or(0))))
                .flatten()
        })
    };
    let (uid, mut gid) = match u.parse::<u32>() {
        Ok(n) => (n, lookup_gid_of_uid(&passwd, n).unwrap_or(0)),
        Err(_) => lookup(&passwd, u, 3).unwrap_or((0, 0)),
    };
    if let Some(g) = g {
        gid = g.parse().ok().or_else(|| lookup(&group, g, 2).map(|(id, _)| id)).unwrap_or(gid);
    }
    (uid, gid)
}

fn lookup_gid_of_uid(passwd: &str, uid: u32) -> Option<u32> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[3].parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(entry: &[&str], cmd: &[&str]) -> shoal_images::ImageConfig {
        shoal_images::ImageConfig {
            entrypoint: entry.iter().map(|s| s.to_string()).collect(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            working_dir: String::new(),
            user: String::new(),
            exposed_ports: vec![],
            stop_signal: None,
        }
    }

    #[test]
    fn args_follow_kubernetes_rules() {
        let img = image(&["/docker-entrypoint.sh"], &["nginx", "-g", "daemon off;"]);
        assert_eq!(process_args(&json!({}), &img), ["/docker-entrypoint.sh", "nginx", "-g", "daemon off;"]);
        assert_eq!(process_args(&json!({"args": ["x"]}), &img), ["/docker-entrypoint.sh", "x"]);
        assert_eq!(process_args(&json!({"command": ["sh", "-c"], "args": ["echo"]}), &img), ["sh", "-c", "echo"]);
        assert_eq!(process_args(&json!({"command": ["sleep"]}), &img), ["sleep"]);
    }

    #[test]
    fn devices_become_nodes_and_cgroup_rules() {
        assert_eq!(dev_major_minor(0x0403), (4, 3));
        assert_eq!(dev_major_minor((188 << 8) | 1), (188, 1));
        let mut spec = json!({"linux": {"resources": {}}});
        add_device(&mut spec, Path::new("/dev/null")).expect("/dev/null is a device");
        assert_eq!(spec["linux"]["devices"][0]["path"], "/dev/null");
        assert_eq!(spec["linux"]["devices"][0]["major"], 1);
        assert_eq!(
            spec["linux"]["resources"]["devices"][0],
            json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"})
        );
        assert!(add_device(&mut spec, Path::new("/etc/hostname")).is_err());
    }

    fn built(pod: Value, container: Value) -> Value {
        let img = image(&["sleep"], &[]);
        let input = ContainerInput {
            pod: &pod,
            container: &container,
            image: &img,
            rootfs: Path::new("/tmp/rootfs"),
            netns: Path::new("/run/netns/p"),
            ipcns: Path::new("/run/ipcns/p"),
            utsns: Path::new("/run/utsns/p"),
            env: vec![],
            mounts: vec![],
            cgroups_path: "/p".into(),
            uid: 1000,
            gid: 1000,
        };
        build(&input)
    }

    fn caps(spec: &Value) -> Vec<String> {
        strings(&spec["process"]["capabilities"]["bounding"])
    }

    #[test]
    fn capabilities_add_and_drop_as_containerd() {
        let d = built(json!({}), json!({}));
        assert!(caps(&d).contains(&"CAP_NET_RAW".to_string()));
        assert!(!caps(&d).contains(&"CAP_NET_ADMIN".to_string()));
        let s =
            built(json!({}), json!({"securityContext": {"capabilities": {"add": ["NET_ADMIN"], "drop": ["NET_RAW"]}}}));
        assert!(caps(&s).contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!caps(&s).contains(&"CAP_NET_RAW".to_string()));
        assert_eq!(s["process"]["capabilities"]["effective"], s["process"]["capabilities"]["bounding"]);
        let s = built(json!({}), json!({"securityContext": {"capabilities": {"drop": ["ALL"], "add": ["CHOWN"]}}}));
        assert_eq!(caps(&s), ["CAP_CHOWN"]);
        let s = built(json!({}), json!({"securityContext": {"capabilities": {"add": ["ALL"]}}}));
        assert!(caps(&s).contains(&"CAP_SYS_ADMIN".to_string()));
        assert!(check_security(
            &json!({}),
            &json!({"securityContext": {"capabilities": {"add": ["NET_ADMIN", "ALL"]}}})
        )
        .is_ok());
        let e = check_security(&json!({}), &json!({"securityContext": {"capabilities": {"add": ["GOD_MODE"]}}}));
        assert!(e.unwrap_err().contains("unknown capability \"GOD_MODE\""));
    }

    #[test]
    fn privileged_escalation_and_groups() {
        let d = built(json!({}), json!({}));
        assert_eq!(d["process"]["noNewPrivileges"], true);
        let p = built(json!({}), json!({"securityContext": {"privileged": true}}));
        assert!(caps(&p).contains(&"CAP_SYS_ADMIN".to_string()));
        assert_eq!(p["process"]["noNewPrivileges"], false);
        assert_eq!(p["linux"]["maskedPaths"], json!([]));
        // The host's devices (/dev/null at least) and a device cgroup allowing all.
        assert!(p["linux"]["devices"].as_array().is_some_and(|d| d.iter().any(|d| d["path"] == "/dev/null")));
        assert_eq!(p["linux"]["resources"]["devices"], json!([{"allow": true, "type": "a", "access": "rwm"}]));
        assert!(d["linux"]["devices"].is_null(), "{}", d["linux"]["devices"]);
        let a = built(json!({}), json!({"securityContext": {"allowPrivilegeEscalation": false}}));
        assert_eq!(a["process"]["noNewPrivileges"], true);
        let a = built(json!({}), json!({"securityContext": {"allowPrivilegeEscalation": true}}));
        assert_eq!(a["process"]["noNewPrivileges"], false);
        let g = built(json!({"spec": {"securityContext": {"supplementalGroups": [5, 7], "fsGroup": 2000}}}), json!({}));
        assert_eq!(g["process"]["user"]["additionalGids"], json!([5, 7, 2000]));
        let r = built(json!({}), json!({"securityContext": {"readOnlyRootFilesystem": true}}));
        assert_eq!(r["root"]["readonly"], true);
    }

    #[test]
    fn run_as_user_and_group_container_then_pod_then_image() {
        let pod = json!({"spec": {"securityContext": {"runAsUser": 1000, "runAsGroup": 3000}}});
        assert_eq!(run_as(&pod, &json!({}), (0, 0)), (1000, 3000));
        assert_eq!(run_as(&pod, &json!({"securityContext": {"runAsUser": 7}}), (0, 0)), (7, 3000));
        assert_eq!(run_as(&json!({}), &json!({}), (33, 44)), (33, 44));
        assert_eq!(run_as(&json!({}), &json!({"securityContext": {"runAsUser": 5}}), (33, 44)), (5, 0));
        assert_eq!(run_as(&json!({}), &json!({"securityContext": {"runAsGroup": 9}}), (33, 44)), (33, 9));
    }

    #[test]
    fn sysctls_safe_ones_set_unsafe_ones_refused_host_ipc_shares() {
        let safe = json!({"spec": {"securityContext": {"sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "80"}]}}});
        assert!(check_security(&safe, &json!({})).is_ok());
        let s = built(safe, json!({}));
        assert_eq!(s["linux"]["sysctl"]["net.ipv4.ip_unprivileged_port_start"], "80");
        let unsafe_ = json!({"spec": {"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}}});
        let e = check_security(&unsafe_, &json!({})).unwrap_err();
        assert!(e.starts_with("forbidden sysctl: \"kernel.msgmax\" not allowlisted"), "{e}");
        let ns = |s: &Value| -> Vec<String> {
            s["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["type"].as_str().unwrap().to_string())
                .collect()
        };
        assert!(ns(&built(json!({}), json!({}))).contains(&"ipc".to_string()));
        assert!(!ns(&built(json!({"spec": {"hostIPC": true}}), json!({}))).contains(&"ipc".to_string()));
    }

    #[test]
    fn quantities() {
        assert_eq!(cpu_millis("250m"), Some(250));
        assert_eq!(cpu_millis("1.5"), Some(1500));
        assert_eq!(bytes("512Mi"), Some(512 * 1024 * 1024));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(bytes("junk"), None);
        let r = resources(
            &json!({"resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "250m", "memory": "768Mi"}}}),
        );
        assert_eq!(r["cpu"]["shares"], 102);
        assert_eq!(r["cpu"]["quota"], 25000);
        assert_eq!(r["memory"]["limit"], 768 * 1024 * 1024);
    }
}
