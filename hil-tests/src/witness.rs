//! The `witness` scenario: two workload nodes and a witness (`shoal up --witness`). The witness
//! must run nothing (no Node object, no pods, no LoadBalancer IP); when the workload node that
//! announces the LoadBalancer IP loses power, the other one must keep the API writable, get the
//! lost pods back and take over the IP, with the witness's vote. Then the roles change on the
//! running cluster: the witness joined a two-node cluster (no fault tolerance) and became the
//! third voter; it never leads and serves no Kubernetes API. After the power-off it is
//! restarted as a workload node (a Node, pods placed on it), then as a witness again (it
//! drains: its pod runs elsewhere, its Node is gone), and
//! finally stopped and removed with `shoal node remove` (two nodes, no fault tolerance again).
use std::time::{Duration, Instant};

use tracing::info;

use crate::error::Result;
use crate::proc::wait_until;
use crate::rig::Rig;
use crate::scenarios::{Measured, ScenarioOptions};
use crate::services::{client_answers, failed, holders, kubectl_for, set, Kubectl, Scratch, LB_APP};
use crate::shoal::{self, ms, Cluster, CONVERGE_TIMEOUT};

/// Hosts: two workload nodes and the witness.
pub const HOSTS: usize = 3;

/// How long the members may take to see each other again after a node (re)starts: on a loaded
/// 2-core machine a debug node's start-up alone took most of a minute.
const RESTART_TIMEOUT: Duration = Duration::from_secs(180);

fn nothing_on_witness(name: &str, k: &Kubectl<'_>, via: &str, witness: &str) -> Result<()> {
    let nodes = k.on(via, &["get", "nodes", "-o", "name"]).map_err(|e| failed(name, e))?;
    if nodes.lines().any(|l| l.trim() == format!("node/{witness}")) {
        return Err(failed(name, format!("the witness {witness} has a Node object: {nodes}")));
    }
    let fmt = "jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name} {.spec.nodeName}{\"\\n\"}{end}";
    let all = k.on(via, &["get", "pods", "-A", "-o", fmt]).map_err(|e| failed(name, e))?;
    let pods: Vec<&str> = all.lines().filter(|l| l.split_whitespace().nth(1) == Some(witness)).collect();
    if !pods.is_empty() {
        return Err(failed(name, format!("pods on the witness {witness}: {pods:?}")));
    }
    Ok(())
}

pub fn witness(rig: &dyn Rig, _opts: &ScenarioOptions) -> Result<Measured> {
    let name = "witness";
    let scratch = Scratch::new(name)?;
    let hosts = rig.hosts();
    if hosts.len() < HOSTS {
        return Err(failed(name, format!("needs {HOSTS} hosts, the rig has {}", hosts.len())));
    }
    let (workers, w) = (hosts[..2].to_vec(), hosts[2].clone());
    let mut m = Measured::default();
    // Two workload nodes: one voter, one learner, and `shoal status` says there is no fault
    // tolerance.
    let mut cluster = Cluster::form(rig, &workers[..1], None)?;
    cluster.start_joining(&workers[1])?;
    no_fault_tolerance(name, rig, &workers[0], 2)?;
    // The witness joins the running cluster and becomes the third voter.
    let worker_launch = cluster.launch()?;
    let mut launch = worker_launch.clone();
    launch.extra_args.push("--witness".into());
    rig.start(&w, &launch)?;
    cluster.members.push(w.clone());
    let leader = cluster.wait_converged(RESTART_TIMEOUT)?;
    if leader == w {
        return Err(failed(name, format!("the witness {w} leads")));
    }
    let st = shoal::status(rig, &workers[0])?;
    if st.voters().len() != 3 {
        return Err(failed(name, format!("voters {:?}, want both workload nodes and the witness", st.voters())));
    }
    node_role_is(name, rig, &workers[0], &w, "witness")?;
    m.note(format!("voters: {:?}", st.voters()));
    // The witness gets the test images too: it runs pods for a while as a workload node.
    let k = kubectl_for(rig, name, &hosts[..HOSTS], &scratch)?;
    let first = workers[0].clone();
    k.apply_metallb(&first, &scratch)?;
    k.apply(&first, &scratch.write("lb-web.yaml", LB_APP)?, CONVERGE_TIMEOUT)?;
    let vip = k
        .ingress_ip(&first, "lb-web", Duration::from_secs(120))
        .map_err(|e| failed(name, format!("{e}: the Service never got a LoadBalancer IP")))?;
    wait_until("3 ready lb-web pods", Duration::from_secs(240), Duration::from_secs(1), || {
        k.on(&first, &["get", "deploy", "lb-web", "-o", "jsonpath={.status.readyReplicas}"])
            .is_ok_and(|s| s.trim() == "3")
    })
    .map_err(|e| failed(name, e.to_string()))?;
    let mut holder = Vec::new();
    wait_until(
        &format!("{vip} held by one node and answering"),
        Duration::from_secs(120),
        Duration::from_millis(500),
        || {
            holder = holders(rig, &hosts[..HOSTS], &vip);
            holder.len() == 1 && client_answers(rig, &k.client, &vip)
        },
    )
    .map_err(|e| failed(name, format!("{e}: holders {holder:?}")))?;
    if holder[0] == w {
        return Err(failed(name, format!("the witness {w} announces {vip}")));
    }
    nothing_on_witness(name, &k, &first, &w)?;
    // The witness serves no Kubernetes API.
    if let Ok(out) = k.on(&w, &["get", "--raw", "/readyz"]) {
        return Err(failed(name, format!("the witness {w} serves the Kubernetes API: {out}")));
    }
    // The witness's resident memory, from its own `shoal status`.
    if let Some(bytes) = status_json(name, rig, &w)?["rss_bytes"].as_f64() {
        set(&mut m, "witness_rss_mib", bytes / (1024.0 * 1024.0));
    }

    // The workload node holding the IP loses power.
    let victim = holder[0].clone();
    let survivor = workers.iter().find(|h| **h != victim).cloned().unwrap_or_default();
    let kill_at = Instant::now();
    rig.power_off(&victim)?;
    info!(victim, survivor, vip, "workload node powered off");
    let (mut wrote, mut moved, mut answered, mut back) = (None, None, None, None);
    let mut n = 0u32;
    wait_until(
        "API writable, ip moved and pods back on the survivor",
        Duration::from_secs(90),
        Duration::from_millis(200),
        || {
            if wrote.is_none() {
                n += 1;
                let cm = format!("witness-probe-{n}");
                if k.on(&survivor, &["create", "configmap", &cm, "--from-literal=k=v"]).is_ok() {
                    wrote = Some(ms(kill_at, Instant::now()));
                }
            }
            if moved.is_none() && !holders(rig, std::slice::from_ref(&survivor), &vip).is_empty() {
                moved = Some(ms(kill_at, Instant::now()));
            }
            if answered.is_none() && moved.is_some() && client_answers(rig, &k.client, &vip) {
                answered = Some(ms(kill_at, Instant::now()));
            }
            if back.is_none() && k.running_pods(&survivor, "app=lb-web").iter().filter(|p| p.1 == survivor).count() >= 3
            {
                back = Some(kill_at.elapsed().as_secs_f64());
            }
            wrote.is_some() && answered.is_some() && back.is_some()
        },
    )
    .map_err(|e| {
        failed(
            name,
            format!(
                "{e}: write after {wrote:?} ms, ip moved {moved:?} ms, answered {answered:?} ms, pods back {back:?} s"
            ),
        )
    })?;
    set(&mut m, "witness_write_gap_ms", wrote.unwrap_or_default());
    set(&mut m, "witness_vip_moved_ms", moved.unwrap_or_default());
    set(&mut m, "witness_vip_failover_ms", answered.unwrap_or_default());
    set(&mut m, "witness_pods_back_s", back.unwrap_or_default());
    nothing_on_witness(name, &k, &survivor, &w)?;
    if holders(rig, std::slice::from_ref(&w), &vip).len() == 1 {
        return Err(failed(name, format!("the witness {w} took {vip}")));
    }
    m.note(format!("powered off {victim}; {survivor} kept the API writable, took {vip} and the pods; {w} ran nothing"));

    // The workload node comes back.
    rig.restart(&victim)?;
    let leader = cluster.wait_converged(RESTART_TIMEOUT)?;
    frozen_leader_and_a_lagging_worker(rig, &cluster, &k, &workers, &leader, &worker_launch, &mut m)?;

    // The witness becomes a workload node and takes pods.
    let roles_at = Instant::now();
    rig.stop(&w, Duration::from_secs(10))?;
    rig.start(&w, &worker_launch)?;
    cluster.wait_converged(RESTART_TIMEOUT)?;
    node_role_is(name, rig, &survivor, &w, "worker")?;
    let ready = "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}";
    wait_until(&format!("kubectl get node {w}: Ready"), CONVERGE_TIMEOUT, Duration::from_millis(500), || {
        k.on(&survivor, &["get", "node", &w, "-o", ready]).is_ok_and(|s| s.trim() == "True")
    })
    .map_err(|e| failed(name, e.to_string()))?;
    // With the workload nodes cordoned, a new pod can only go to the converted node.
    let cordon = |verb: &str| {
        let mut args = vec![verb];
        args.extend(workers.iter().map(String::as_str));
        k.on(&survivor, &args).map_err(|e| failed(name, e))
    };
    cordon("cordon")?;
    k.apply(&survivor, &scratch.write("near-w.yaml", NEAR_W)?, CONVERGE_TIMEOUT)?;
    let mut placed = Vec::new();
    let on_w =
        wait_until(&format!("a near-w pod running on {w}"), Duration::from_secs(120), Duration::from_secs(1), || {
            placed = k.running_pods(&survivor, "app=near-w");
            placed.iter().any(|p| p.1 == w)
        });
    cordon("uncordon")?;
    on_w.map_err(|e| failed(name, format!("{e}: near-w pods {placed:?}")))?;
    m.note(format!("{w} restarted without --witness: a Node, pods placed on it"));

    // And back: restarted with --witness, it drains (the pod comes back on a workload node)
    // and its Node object goes.
    rig.stop(&w, Duration::from_secs(10))?;
    rig.start(&w, &launch)?;
    cluster.wait_converged(RESTART_TIMEOUT)?;
    node_role_is(name, rig, &survivor, &w, "witness")?;
    wait_until(&format!("{w} drained"), Duration::from_secs(120), Duration::from_secs(1), || {
        placed = k.running_pods(&survivor, "app=near-w");
        placed.len() == 1
            && placed.iter().all(|p| workers.contains(&p.1))
            && nothing_on_witness(name, &k, &survivor, &w).is_ok()
    })
    .map_err(|e| failed(name, format!("{e}: near-w pods {placed:?}")))?;
    if holders(rig, std::slice::from_ref(&w), &vip).len() == 1 {
        return Err(failed(name, format!("the witness {w} announces {vip} after its drain")));
    }
    m.note(format!("{w} restarted with --witness: drained, no Node, near-w back on {}", placed[0].1));

    // The witness leaves: two nodes again, without fault tolerance.
    rig.stop(&w, Duration::from_secs(10))?;
    let mut out = String::new();
    wait_until(&format!("shoal node remove {w}"), Duration::from_secs(60), Duration::from_secs(1), || {
        match shoal::run_shoal(rig, &survivor, &["node", "remove", &w], Duration::from_secs(20)) {
            Ok(o) => {
                out = format!("{}{}", o.stdout, o.stderr);
                o.success()
            }
            Err(e) => {
                out = e.to_string();
                false
            }
        }
    })
    .map_err(|e| failed(name, format!("{e}: {out}")))?;
    no_fault_tolerance(name, rig, &survivor, 2)?;
    k.on(&survivor, &["create", "configmap", "after-witness-removed"]).map_err(|e| failed(name, e))?;
    set(&mut m, "witness_roles_s", roles_at.elapsed().as_secs_f64());
    m.note(format!("{w} removed: {}", out.trim()));
    Ok(m)
}

/// The leader freezes (SIGSTOP) while the other workload node, stopped while the leader and the
/// witness wrote, starts again with a log behind theirs; then the leader thaws. The lagging node
/// cannot win an election, and it must not stall the others: the witness leads (and hands over)
/// while the leader is frozen, and after the thaw the members agree on one leader and writes go
/// through. Before pre-votes, its failed elections kept raising the term and the cluster had no
/// leader for minutes.
fn frozen_leader_and_a_lagging_worker(
    rig: &dyn Rig,
    cluster: &Cluster<'_>,
    k: &Kubectl<'_>,
    workers: &[String],
    leader: &str,
    launch: &crate::rig::Launch,
    m: &mut Measured,
) -> Result<()> {
    let name = "witness";
    let Some(lagging) = workers.iter().find(|h| *h != leader).cloned() else {
        return Err(failed(name, format!("the witness leads ({leader}) after the workload node came back")));
    };
    rig.stop(&lagging, Duration::from_secs(10))?;
    for i in 0..5 {
        k.on(leader, &["create", "configmap", &format!("while-{lagging}-down-{i}")]).map_err(|e| failed(name, e))?;
    }
    rig.freeze(leader)?;
    let frozen = rig.start(&lagging, launch).map(|_| std::thread::sleep(Duration::from_secs(5)));
    rig.thaw(leader)?;
    frozen?;
    let thawed = Instant::now();
    cluster.wait_converged(RESTART_TIMEOUT)?;
    let mut n = 0;
    wait_until(
        "a write through the lagging node after the thaw",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            n += 1;
            k.on(&lagging, &["create", "configmap", &format!("after-thaw-{n}")]).is_ok()
        },
    )
    .map_err(|e| failed(name, e.to_string()))?;
    set(m, "witness_thaw_to_write_s", thawed.elapsed().as_secs_f64());
    m.note(format!(
        "{leader} frozen while {lagging} restarted behind: one leader and writes {:.1} s after the thaw",
        thawed.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// A Deployment of one pod.
const NEAR_W: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: near-w
spec:
  replicas: 1
  selector:
    matchLabels: {app: near-w}
  template:
    metadata:
      labels: {app: near-w}
    spec:
      containers:
      - name: node-web
        image: whatwant/node-web:1.0
"#;

/// `shoal status --json` on `host`, as JSON.
fn status_json(name: &str, rig: &dyn Rig, host: &str) -> Result<serde_json::Value> {
    let out = shoal::run_shoal(rig, host, &["status", "--json"], shoal::CLI_TIMEOUT)?;
    serde_json::from_str(&out.stdout).map_err(|e| failed(name, format!("shoal status on {host}: {e}: {}", out.stdout)))
}

/// Waits until `host`'s `shoal status` shows `member` with node role `role`.
fn node_role_is(name: &str, rig: &dyn Rig, host: &str, member: &str, role: &str) -> Result<()> {
    let mut seen = serde_json::Value::Null;
    wait_until(&format!("{member} shown as {role}"), CONVERGE_TIMEOUT, Duration::from_millis(500), || {
        seen = status_json(name, rig, host).map(|st| st["members"].clone()).unwrap_or_default();
        seen.as_array().is_some_and(|ms| ms.iter().any(|m| m["name"] == member && m["node_role"] == role))
    })
    .map(|_| ())
    .map_err(|e| failed(name, format!("{e}: members {seen}")))
}

/// Waits until `host` sees `members` members, one voter, and says it has no fault tolerance.
fn no_fault_tolerance(name: &str, rig: &dyn Rig, host: &str, members: usize) -> Result<()> {
    let mut seen = serde_json::Value::Null;
    wait_until(
        &format!("{host}: {members} members, no fault tolerance"),
        CONVERGE_TIMEOUT,
        Duration::from_millis(500),
        || {
            seen = status_json(name, rig, host).unwrap_or_default();
            seen["members"].as_array().is_some_and(|ms| ms.len() == members)
                && seen["fault_tolerance"]["voters"] == 1
                && seen["fault_tolerance"]["message"].as_str().is_some_and(|s| s.starts_with("NO fault tolerance"))
        },
    )
    .map(|_| ())
    .map_err(|e| failed(name, format!("{e}: status {seen}")))
}
