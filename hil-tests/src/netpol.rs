//! The `netpol` scenario: NetworkPolicy enforced on a 3-node cluster, driven with the real
//! `kubectl` from the client host. Pods are pinned to nodes so that every case is tried from a
//! pod on the server's node (across the bridge) and from pods on other nodes: deny-all, allow
//! from a namespace, allow from some pods of another namespace, allow only a port (also through
//! a ClusterIP), deny egress (and DNS back through the usual allow-DNS policy), deny external
//! egress. Each case checks allowed and denied connections (busybox `nc -w 2 ... -e true`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::proc::wait_until;
use crate::rig::Rig;
use crate::scenarios::{Measured, ScenarioOptions};
use crate::services::{cluster_with_kubectl, failed, set, Kubectl, Scratch};
use crate::shoal::CONVERGE_TIMEOUT;

const NAME: &str = "netpol";

/// How long one case may take to show on every node (enforcement is sub-second; this bounds
/// a slow rig, never a pass).
const CASE_TIMEOUT: Duration = Duration::from_secs(30);

fn pod(ns: &str, name: &str, node: &str, labels: &str, server: bool) -> String {
    let cmd = if server {
        "mkdir -p /www && echo ok >/www/index.html && httpd -p 80 -h /www && exec httpd -f -p 8080 -h /www"
    } else {
        "exec sleep 3600"
    };
    let ports = if server {
        "\n    ports:\n    - {name: http, containerPort: 80}\n    - {name: alt, containerPort: 8080}"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {labels}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: c\n    image: busybox:1.25\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, '{cmd}']{ports}\n---\n"
    )
}

fn app(nodes: &[String]) -> String {
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut y = String::new();
    for (ns, labels) in [("np-a", "{}"), ("np-b", "{team: b}"), ("np-c", "{team: c}")] {
        y.push_str(&format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels: {labels}\n---\n"));
    }
    y.push_str(&pod("np-a", "server", n1, "{app: server}", true));
    y.push_str(&pod("np-a", "peer1", n1, "{app: client}", false));
    y.push_str(&pod("np-a", "peer2", n2, "{app: client}", false));
    y.push_str(&pod("np-b", "friend1", n1, "{role: friend}", false));
    y.push_str(&pod("np-b", "friend2", n2, "{role: friend}", false));
    y.push_str(&pod("np-b", "stranger", n3, "{role: stranger}", false));
    y.push_str(&pod("np-c", "c1", n1, "{role: c}", false));
    y.push_str(&pod("np-c", "c3", n3, "{role: c}", false));
    y.push_str(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: np-a\nspec:\n  selector: {app: server}\n  ports:\n  - {name: http, port: 80, targetPort: 80}\n  - {name: alt, port: 8080, targetPort: 8080}\n",
    );
    y
}

const DENY_ALL: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all, namespace: np-a}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n";
const FROM_NS: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: from-team-c, namespace: np-a}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: c}}\n";
const FROM_PODS: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: from-friends, namespace: np-a}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: b}}\n      podSelector: {matchLabels: {role: friend}}\n";
const ONLY_PORT: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: only-alt, namespace: np-a}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress:\n  - ports:\n    - {port: alt}\n";
const DENY_EGRESS: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: friends-deny-egress, namespace: np-b}\nspec:\n  podSelector: {matchLabels: {role: friend}}\n  policyTypes: [Egress]\n";
const ALLOW_DNS: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-dns, namespace: np-b}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}\n      podSelector: {matchLabels: {k8s-app: kube-dns}}\n    ports:\n    - {port: 53, protocol: UDP}\n    - {port: 53, protocol: TCP}\n";
const NO_EXTERNAL: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: pods-only, namespace: np-c}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.42.0.0/16}\n";

/// One expected connection: from `pod` (namespace/name) to `ip:port`, allowed or not.
struct Probe<'a> {
    from: &'a str,
    to: String,
    port: u16,
    allowed: bool,
}

fn p<'a>(from: &'a str, to: &str, port: u16, allowed: bool) -> Probe<'a> {
    Probe { from, to: to.to_string(), port, allowed }
}

/// Which of `targets` (ip, port) `pod` connects to, all tried at once.
fn reach(k: &Kubectl<'_>, via: &str, pod: &str, targets: &[(String, u16)]) -> BTreeMap<(String, u16), bool> {
    let (ns, name) = pod.split_once('/').unwrap_or(("default", pod));
    let mut script = String::new();
    for (ip, port) in targets {
        script.push_str(&format!(
            "(nc -w 2 {ip} {port} -e true >/dev/null 2>&1 && echo {ip}:{port}=1 || echo {ip}:{port}=0) & "
        ));
    }
    script.push_str("wait");
    let out = k.on(via, &["exec", "-n", ns, name, "--", "timeout", "5", "sh", "-c", &script]).unwrap_or_default();
    let mut got = BTreeMap::new();
    for l in out.lines() {
        if let Some((t, v)) = l.trim().split_once('=') {
            if let Some((ip, port)) = t.rsplit_once(':') {
                if let Ok(port) = port.parse() {
                    got.insert((ip.to_string(), port), v == "1");
                }
            }
        }
    }
    got
}

/// Waits until every probe sees what it expects; the error names those that did not.
fn expect(k: &Kubectl<'_>, via: &str, case: &str, probes: &[Probe<'_>]) -> Result<Duration> {
    let started = Instant::now();
    let mut wrong: Vec<String> = Vec::new();
    wait_until(case, CASE_TIMEOUT, Duration::from_millis(200), || {
        let mut by_pod: BTreeMap<&str, Vec<(String, u16)>> = BTreeMap::new();
        for pr in probes {
            by_pod.entry(pr.from).or_default().push((pr.to.clone(), pr.port));
        }
        let results: BTreeMap<&str, BTreeMap<(String, u16), bool>> = std::thread::scope(|s| {
            let handles: Vec<_> =
                by_pod.iter().map(|(pod, targets)| (*pod, s.spawn(move || reach(k, via, pod, targets)))).collect();
            handles.into_iter().map(|(pod, h)| (pod, h.join().unwrap_or_default())).collect()
        });
        wrong = probes
            .iter()
            .filter(|pr| results.get(pr.from).and_then(|r| r.get(&(pr.to.clone(), pr.port))) != Some(&pr.allowed))
            .map(|pr| {
                format!(
                    "{} -> {}:{} should be {}",
                    pr.from,
                    pr.to,
                    pr.port,
                    if pr.allowed { "allowed" } else { "denied" }
                )
            })
            .collect();
        wrong.is_empty()
    })
    .map_err(|e| failed(NAME, format!("{case}: {e}: {wrong:?}")))?;
    Ok(started.elapsed())
}

pub fn netpol(rig: &dyn Rig, opts: &ScenarioOptions) -> Result<Measured> {
    let scratch = Scratch::new(NAME)?;
    let (hosts, k) = cluster_with_kubectl(rig, opts, NAME, &scratch)?;
    if hosts.len() < 3 {
        return Err(failed(NAME, "needs 3 nodes"));
    }
    let first = hosts[0].clone();
    let mut m = Measured::default();
    let nodes_out =
        k.on(&first, &["get", "nodes", "-o", "jsonpath={.items[*].metadata.name}"]).map_err(|e| failed(NAME, e))?;
    let mut nodes: Vec<String> = nodes_out.split_whitespace().map(str::to_string).collect();
    nodes.sort();
    if nodes.len() < 3 {
        return Err(failed(NAME, format!("3 nodes wanted, kubectl lists {nodes:?}")));
    }
    let started = Instant::now();
    k.apply(&first, &scratch.write("app.yaml", &app(&nodes))?, CONVERGE_TIMEOUT)?;
    let mut ips: BTreeMap<String, String> = BTreeMap::new();
    wait_until("the 8 netpol pods Running", Duration::from_secs(180), Duration::from_millis(500), || {
        let fmt = "jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name} {.status.phase} {.status.podIP}{\"\\n\"}{end}";
        let out = k.on(&first, &["get", "pods", "-A", "-o", fmt]).unwrap_or_default();
        ips = out
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                (w.len() == 3 && w[1] == "Running" && w[0].starts_with("np-")).then(|| (w[0].to_string(), w[2].to_string()))
            })
            .collect();
        ips.len() == 8
    })
    .map_err(|e| failed(NAME, format!("{e}: {ips:?}")))?;
    set(&mut m, "pods_running_s", started.elapsed().as_secs_f64());
    let server = ips["np-a/server"].clone();
    let svc = k
        .on(&first, &["get", "svc", "-n", "np-a", "web", "-o", "jsonpath={.spec.clusterIP}"])
        .map_err(|e| failed(NAME, e))?
        .trim()
        .to_string();
    let node1_ip = rig.address(&hosts[0])?.to_string();
    let node3_ip = rig.address(&hosts[2])?.to_string();
    let policy =
        |file: &str, text: &str| -> Result<()> { k.apply(&first, &scratch.write(file, text)?, CONVERGE_TIMEOUT) };
    let delete = |ns: &str, names: &[&str]| -> Result<()> {
        let mut args = vec!["delete", "networkpolicy", "-n", ns];
        args.extend_from_slice(names);
        k.on(&first, &args).map(drop).map_err(|e| failed(NAME, e))
    };
    let cases_started = Instant::now();
    let s = server.as_str();

    // Before any policy: everything reaches the server, and outside addresses are reachable.
    let t = expect(
        &k,
        &first,
        "no policy: all allowed",
        &[
            p("np-a/peer1", s, 80, true),
            p("np-b/friend2", s, 80, true),
            p("np-c/c3", s, 80, true),
            p("np-c/c1", &node3_ip, 6443, true),
        ],
    )?;
    set(&mut m, "baseline_s", t.as_secs_f64());

    // 1. Deny all ingress in np-a: same node, other node, other namespace all refused.
    policy("deny-all.yaml", DENY_ALL)?;
    let t = expect(
        &k,
        &first,
        "deny-all",
        &[
            p("np-a/peer1", s, 80, false),
            p("np-a/peer2", s, 80, false),
            p("np-b/friend2", s, 8080, false),
            p("np-c/c1", s, 80, false),
        ],
    )?;
    set(&mut m, "deny_all_enforced_s", t.as_secs_f64());

    // 2. Allow from a namespace (team=c), on top of deny-all.
    policy("from-ns.yaml", FROM_NS)?;
    expect(
        &k,
        &first,
        "allow from namespace team=c",
        &[
            p("np-c/c1", s, 80, true),
            p("np-c/c3", s, 80, true),
            p("np-b/friend1", s, 80, false),
            p("np-a/peer2", s, 80, false),
        ],
    )?;

    // 3. Allow from some pods of another namespace (team=b AND role=friend): ORed with 2.
    policy("from-pods.yaml", FROM_PODS)?;
    expect(
        &k,
        &first,
        "allow from role=friend pods of team=b",
        &[
            p("np-b/friend1", s, 80, true),
            p("np-b/friend2", s, 80, true),
            p("np-b/stranger", s, 80, false),
            p("np-a/peer1", s, 80, false),
            p("np-c/c3", s, 80, true),
        ],
    )?;

    // 4. Allow only the port named alt (8080), from anywhere; also through the ClusterIP.
    delete("np-a", &["from-team-c", "from-friends"])?;
    policy("only-port.yaml", ONLY_PORT)?;
    let sv = svc.as_str();
    expect(
        &k,
        &first,
        "allow only port alt",
        &[
            p("np-a/peer1", s, 8080, true),
            p("np-a/peer1", s, 80, false),
            p("np-b/stranger", s, 8080, true),
            p("np-b/stranger", s, 80, false),
            p("np-b/friend2", sv, 8080, true),
            p("np-b/friend2", sv, 80, false),
            p("np-a/peer1", sv, 80, false),
        ],
    )?;

    // 5. Deny egress of role=friend pods in np-b (ingress of np-a open again).
    delete("np-a", &["deny-all", "only-alt"])?;
    policy("deny-egress.yaml", DENY_EGRESS)?;
    expect(
        &k,
        &first,
        "deny egress of friends",
        &[
            p("np-b/friend1", s, 80, false),
            p("np-b/friend2", s, 80, false),
            p("np-b/stranger", s, 80, true),
            p("np-a/peer2", s, 80, true),
        ],
    )?;
    // DNS is refused too, until the usual allow-DNS policy is applied.
    let lookup = |pod: &str| {
        k.on(&first, &["exec", "-n", "np-b", pod, "--", "timeout", "3", "nslookup", "web.np-a.svc.cluster.local"])
            .is_ok_and(|o| o.contains(&svc))
    };
    wait_until("friend1 cannot resolve under egress deny", CASE_TIMEOUT, Duration::from_millis(200), || {
        !lookup("friend1")
    })
    .map_err(|e| failed(NAME, e.to_string()))?;
    policy("allow-dns.yaml", ALLOW_DNS)?;
    wait_until("friend1 resolves with the allow-DNS policy", CASE_TIMEOUT, Duration::from_millis(200), || {
        lookup("friend1")
    })
    .map_err(|e| failed(NAME, e.to_string()))?;
    expect(
        &k,
        &first,
        "allow-DNS opens only DNS",
        &[p("np-b/friend1", s, 80, false), p("np-b/friend2", s, 80, false)],
    )?;

    // 6. Deny external egress of np-c: pods stay reachable, node addresses do not.
    policy("no-external.yaml", NO_EXTERNAL)?;
    expect(
        &k,
        &first,
        "deny external egress",
        &[
            p("np-c/c1", s, 80, true),
            p("np-c/c3", s, 80, true),
            p("np-c/c1", &node3_ip, 6443, false),
            p("np-c/c3", &node1_ip, 6443, false),
            p("np-a/peer1", &node3_ip, 6443, true),
        ],
    )?;
    set(&mut m, "cases_s", cases_started.elapsed().as_secs_f64());
    let rules = rig
        .exec_timeout(&hosts[0], &["nft", "list", "table", "inet", "shoal-netpol"], Duration::from_secs(5))
        .map(|o| o.stdout.lines().count())
        .unwrap_or(0);
    set(&mut m, "node1_netpol_table_lines", rules as f64);
    Ok(m)
}
