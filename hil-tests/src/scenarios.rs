//! The scenario suite: each scenario forms a cluster on a rig, breaks something, and returns what
//! it measured. A scenario fails only on what a user would see go wrong (a lost or inconsistent
//! write, a write acknowledged by a minority, a cluster that never recovers), never on a timing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tracing::info;

use crate::error::{Error, Result};
use crate::history::{Call, History, Operation, Outcome};
use crate::linearizability::{self, Verdict};
use crate::proc::wait_until;
use crate::results::{utc_now, Figures, ScenarioRecord};
use crate::rig::{Netem, Rig};
use crate::shoal::{self, ms, Cluster, CONVERGE_TIMEOUT};
use crate::workload::{self, final_reads, first_ack_after, summarize, Workload, WorkloadOptions};

/// Names of all scenarios, in suite order.
pub const SCENARIOS: &[&str] = &[
    "cluster-forms",
    "leader-killed",
    "leader-partitioned",
    "minority-partition",
    "full-power-cut",
    "join-and-replace",
    "packet-loss",
    "rolling-upgrade",
    "clock-jump",
    "lb-failover",
    "pods-back",
    "routed-pods",
    "services",
    "ingress",
    "attacks",
    "witness",
    "netpol",
];

/// Knobs of the suite.
#[derive(Clone, Debug)]
pub struct ScenarioOptions {
    /// Voters of the cluster under test (3 or 5).
    pub nodes: usize,
    /// How long the lossy link lasts in `packet-loss`.
    pub loss_duration: Duration,
    pub loss_percent: f64,
    /// How long partitions last.
    pub partition_duration: Duration,
    /// `[store] voter_grace` given to the nodes in `join-and-replace`.
    pub voter_grace: Duration,
    /// The binary rolled out by `rolling-upgrade` (default: the one already running).
    pub upgrade_binary: Option<PathBuf>,
    /// The commit `rolling-upgrade` upgrades from (`release`: the merge base with the last
    /// release tag), built once (see [`crate::upgrade::previous_binary`]). None: no previous build.
    pub upgrade_from: Option<String>,
    /// A previous shoal binary `rolling-upgrade` upgrades from (instead of building one).
    pub upgrade_from_bin: Option<PathBuf>,
    /// The shoal-hil binary, run on the client host by `attacks` to forge datagrams.
    pub hil_bin: Option<PathBuf>,
    pub workload: WorkloadOptions,
}

impl Default for ScenarioOptions {
    fn default() -> Self {
        ScenarioOptions {
            nodes: 3,
            loss_duration: Duration::from_secs(60),
            loss_percent: 30.0,
            partition_duration: Duration::from_secs(10),
            voter_grace: Duration::from_secs(5),
            upgrade_binary: None,
            upgrade_from: None,
            upgrade_from_bin: None,
            hil_bin: None,
            workload: WorkloadOptions::default(),
        }
    }
}

impl ScenarioOptions {
    /// Shorter faults, for the test suite.
    pub fn for_tests() -> Self {
        ScenarioOptions {
            loss_duration: Duration::from_secs(15),
            partition_duration: Duration::from_secs(5),
            ..Default::default()
        }
    }
}

/// Hosts a scenario needs on the rig.
pub fn hosts_needed(scenario: &str, opts: &ScenarioOptions) -> usize {
    if scenario == "join-and-replace" {
        opts.nodes + 1
    } else {
        opts.nodes
    }
}

/// Whether a scenario needs the rig's client host (it drives kubectl and curl from there).
pub fn needs_client(scenario: &str) -> bool {
    matches!(
        canonical(scenario).as_str(),
        "lb-failover"
            | "pods-back"
            | "routed-pods"
            | "services"
            | "ingress"
            | "attacks"
            | "witness"
            | "netpol"
            | "rolling-upgrade"
    )
}

/// The rig topology a scenario needs (two subnets with a router between them for `routed-pods`).
pub fn topology(scenario: &str) -> crate::rig::Topology {
    if canonical(scenario) == "routed-pods" {
        crate::rig::Topology::Routed
    } else {
        crate::rig::Topology::Flat
    }
}

/// A scenario name as listed in [`SCENARIOS`] (`lb_failover` is `lb-failover`).
pub fn canonical(scenario: &str) -> String {
    scenario.replace('_', "-")
}

/// What a scenario hands back: figures and notes.
#[derive(Clone, Debug, Default)]
pub struct Measured {
    pub figures: Figures,
    pub notes: Vec<String>,
}

impl Measured {
    pub(crate) fn set(&mut self, name: &str, value: f64) {
        self.figures.insert(name.to_string(), value);
    }
    pub(crate) fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }
}

fn failed(scenario: &str, reason: impl Into<String>) -> Error {
    Error::ScenarioFailed { scenario: scenario.to_string(), reason: reason.into() }
}

/// Runs one scenario by name.
pub fn run(scenario: &str, rig: &dyn Rig, opts: &ScenarioOptions) -> Result<Measured> {
    info!(scenario, "scenario starts");
    match canonical(scenario).as_str() {
        "cluster-forms" => cluster_forms(rig, opts),
        "leader-killed" => leader_killed(rig, opts),
        "leader-partitioned" => leader_partitioned(rig, opts),
        "minority-partition" => minority_partition(rig, opts),
        "full-power-cut" => full_power_cut(rig, opts),
        "join-and-replace" => join_and_replace(rig, opts),
        "packet-loss" => packet_loss(rig, opts),
        "rolling-upgrade" => rolling_upgrade(rig, opts),
        "clock-jump" => crate::clock::clock_jump(rig, opts),
        "lb-failover" => crate::services::lb_failover(rig, opts),
        "pods-back" => crate::services::pods_back(rig, opts),
        "routed-pods" => crate::services::routed_pods(rig, opts),
        "services" => crate::services::services(rig, opts),
        "ingress" => crate::ingress::ingress(rig, opts),
        "attacks" => crate::attacks::attacks(rig, opts),
        "witness" => crate::witness::witness(rig, opts),
        "netpol" => crate::netpol::netpol(rig, opts),
        other => Err(Error::UnknownScenario(other.to_string(), SCENARIOS.join(", "))),
    }
}

/// Runs a scenario and turns its outcome into a record (a failure is a record too).
pub fn run_recorded(scenario: &str, rig: &dyn Rig, opts: &ScenarioOptions) -> ScenarioRecord {
    let started_at = utc_now();
    let t0 = Instant::now();
    let result = run(scenario, rig, opts);
    let (passed, error, measured) = match result {
        Ok(m) => (true, None, m),
        Err(e) => (false, Some(e.to_string()), Measured::default()),
    };
    ScenarioRecord {
        scenario: scenario.to_string(),
        passed,
        error,
        figures: measured.figures,
        notes: measured.notes,
        started_at,
        duration_s: t0.elapsed().as_secs_f64(),
        rig: rig.info(),
    }
}

fn cluster_hosts(rig: &dyn Rig, n: usize, scenario: &str) -> Result<Vec<String>> {
    let hosts = rig.hosts();
    if hosts.len() < n {
        return Err(failed(scenario, format!("needs {n} hosts, the rig has {}", hosts.len())));
    }
    Ok(hosts[..n].to_vec())
}

fn others(hosts: &[String], except: &str) -> Vec<String> {
    hosts.iter().filter(|h| *h != except).cloned().collect()
}

fn strs(hosts: &[String]) -> Vec<&str> {
    hosts.iter().map(String::as_str).collect()
}

/// Keys whose operations are not linearizable; the final reads are part of the history.
fn check_history(scenario: &str, ops: &[Operation], m: &mut Measured) -> Result<()> {
    let mut keys: Vec<&str> = ops.iter().map(|o| o.call.key()).collect();
    keys.sort_unstable();
    keys.dedup();
    let mut bad = Vec::new();
    let mut inconclusive = Vec::new();
    for key in &keys {
        let of_key: Vec<Operation> = ops.iter().filter(|o| o.call.key() == *key).cloned().collect();
        match linearizability::check(&of_key) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable { key, .. } => bad.push(key),
            Verdict::Inconclusive { key } => inconclusive.push(key),
        }
    }
    let lost = workload::lost_acked_writes(ops);
    m.set("lost_acked_writes", lost as f64);
    let s = summarize(ops, 0, u64::MAX);
    m.set("operations", ops.len() as f64);
    m.set("acked_writes", s.acked_writes as f64);
    m.set("unknown_writes", s.unknown_writes as f64);
    m.set("keys_checked", keys.len() as f64);
    m.set("keys_not_linearizable", bad.len() as f64);
    m.set("linearizable", if bad.is_empty() && inconclusive.is_empty() { 1.0 } else { 0.0 });
    if !inconclusive.is_empty() {
        m.note(format!("linearizability search gave up on keys {inconclusive:?}"));
    }
    if !bad.is_empty() {
        return Err(failed(
            scenario,
            format!("history not linearizable on keys {bad:?} (a write was lost or a read saw the past)"),
        ));
    }
    Ok(())
}

/// Waits until every host answers kv reads, then reads every register through each and checks.
pub(crate) fn finish(
    scenario: &str,
    rig: &dyn Rig,
    hosts: &[String],
    history: &History,
    opts: &ScenarioOptions,
    m: &mut Measured,
) -> Result<()> {
    let keys = workload::keys(opts.workload.keys);
    final_reads(rig, hosts, &keys, history, opts.workload.op_timeout);
    check_history(scenario, &history.operations(), m)
}

/// Writes through `host` until one is acknowledged; returns the time it took.
fn write_until_acked(rig: &dyn Rig, host: &str, history: &History, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    let mut seq = 0;
    loop {
        seq += 1;
        let call = Call::Put { key: "hil/probe".to_string(), value: format!("probe-{host}-{seq}") };
        let out = history.record(900, call, |c| match c {
            Call::Put { key, value } => shoal::kv_put(rig, host, key, value, Duration::from_secs(5)),
            Call::Get { .. } => Outcome::Failed,
        });
        if matches!(out, Outcome::Ok(_)) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            return Err(Error::Timeout { what: format!("an acknowledged write through {host}"), waited: timeout });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Cluster forms: every node sees every other alive under one leader; a write is visible everywhere.
pub fn cluster_forms(rig: &dyn Rig, opts: &ScenarioOptions) -> Result<Measured> {
    let name = "cluster-forms";
    let hosts = cluster_hosts(rig, opts.nodes, name)?;
    let mut m = Measured::default();
    let t0 = Instant::now();
    let cluster = Cluster::form(rig, &hosts, None)?;
    m.set("form_ms", ms(t0, Instant::now()));
    m.set("members", cluster.members.len() as f64);
    let history = History::new();
    let write_ms = write_until_acked(rig, &hosts[0], &history, CONVERGE_TIMEOUT)?;
    m.set("first_write_ms", write_ms.as_secs_f64() * 1000.0);
    let last = history.operations().into_iter().rev().find(|o| o.outcome == Outcome::Ok(None));
    let Some(Operation { call: Call::Put { value, .. }, .. }) = last else {
        return Err(failed(name, "no acknowledged write recorded"));
    };
    let t1 = Instant::now();
    for h in &hosts {
        wait_until(&format!("the write visible through {h}"), CONVERGE_TIMEOUT, Duration::from_millis(100), || {
            shoal::kv_get(rig, h, "hil/probe", shoal::CLI_TIMEOUT) == Outcome::Ok(Some(value.clone()))
        })?;
    }
    m.set("write_visible_everywhere_ms", ms(t1, Instant::now()));
    let leader = cluster.wait_converged(CONVERGE_TIMEOUT)?;
    m.note(format!("leader {leader}"));
    Ok(m)
}

/// Leader killed (kill -9 of its whole host): time until a write is acknowledged again.
pub fn leader_killed(rig: &dyn Rig, opts: &ScenarioOptions) -> Result<Measured> {
    let name = "leader-killed";
    let hosts = cluster_hosts(rig, opts.nodes, name)?;
    let cluster = Cluster::form(rig, &hosts, None)?;
    let leader = cluster.wait_converged(CONVERGE_TIMEOUT)?;
    let survivors = others(&hosts, &leader);
    let mut m = Measured::default();
    let history = History::new();
    std::thread::scope(|s| -> Result<()> {
        let w = Workload::spawn(s, rig, survivors.clone(), opts.workload.clone(), history.clone());
        std::thread::sleep(Duration::from_secs(2));
        let kill_at = Instant::now();
        let kill_wall = std::time::SystemTime::now();
        rig.power_off(&leader)?;
        let kill_ns = history.at(kill_at);
        // Wall-clock time of the kill, to line it up with the survivors' daemon logs.
        if let Ok(t) = kill_wall.duration_since(std::time::UNIX_EPOCH) {
            m.note(format!("killed at unix {}.{:03} s", t.as_secs(), t.subsec_millis()));
        }
        let new_leader = cluster.wait_leader_among(&survivors, CONVERGE_TIMEOUT)?;
        m.set("new_leader_ms", ms(kill_at, Instant::now()));
        wait_until("an acknowledged write after the kill", CONVERGE_TIMEOUT, Duration::from_millis(50), || {
            first_ack_after(&history.operations(), kill_ns).is_some()
        })?;
        if let Some(v) = first_ack_after(&history.operations(), kill_ns) {
            m.set("failover_write_ms", v);
        }
        std::thread::sleep(Duration::from_secs(2));
        let back = Instant::now();
        rig.restart(&leader)?;
        cluster.wait_converged(CONVERGE_TIMEOUT)?;
        m.set("rejoin_ms", ms(back, Instant::now()));
        m.note(format!("killed leader {leader}, new leader {new_leader}"));
        w.stop();
        Ok(())
    })?;
    finish(name, rig, &hosts, &history, opts, &mut m)?;
    Ok(m)
}

/// Leader partitioned away from the others, then healed.
pub fn leader_partitioned(rig: &dyn Rig, opts: &ScenarioOptions) -> Result<Measured> {
    let name = "leader-partitioned";
    let hosts = cluster_hosts(rig, opts.nodes, name)?;
    let cluster = Cluster::form(rig, &hosts, None)?;
    let leader = cluster.wait_converged(CONVERGE_TIMEOUT)?;
    let majority = others(&hosts, &leader);
    let mut m = Measured::default();
    let history = History::new();
    let mut isolated_acks = 0usize;
    std::thread::scope(|s| -> Result<()> {
        let w = Workload::spawn(s, rig, majority.clone(), opts.workload.clone(), history.clone());
        std::thread::sleep(Duration::from_secs(2));
        let cut_at = Instant::now();
        rig.partition(&[leader.as_str()], &strs(&majority))?;
        let cut_ns = history.at(cut_at);
        // writes through the isolated old leader must not be acknowledged
        let probe_until = Instant::now() + opts.partition_duration;
        let mut seq = 0;
        while Instant::now() < probe_until {
            seq += 1;
            let call = Call::Put { key: "hil/k0".to_string(), value: format!("isolated-{seq}") };
            let out = history.record(901, call, |c| match c {
                Call::Put { key, value } => shoal::kv_put(rig, &leader, key, value, Duration::from_secs(3)),
                Call::Get { .. } => Outcome::Failed,
            });
            if matches!(out, Outcome::Ok(_)) && Instant::now().duration_since(cut_at) > Duration::from_secs(1) {
                isolated_acks += 1;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        wait_until("an acknowledged write in the majority", CONVERGE_TIMEOUT, Duration::from_millis(50), || {
            first_ack_after(&history.operations(), cut_ns).is_some()
        })?;
        if let Some(v) = first_ack_after(&history.operations(), cut_ns) {
            m.set("failover_write_ms", v);
        }
        let heal_at = Instant::now();
        rig.heal()?;
        let new_leader = cluster.wait_converged(CONVERGE_TIMEOUT)?;
        m.set("heal_converged_ms", ms(heal_at, Instant::now()));
        m.note(format!("isolated leader {leader}; leader after heal {new_leader}"));
        w.stop();
        Ok(())
    })?;
    m.set("isolated_writes_acked", isolated_acks as f64);
    m.note("writes acknowledged within 1 s of the cut are not counted: the old leader may still hold its lease");
    finish(name, rig, &hosts, &history, opts, &mut m)?;
    if isolated_acks > 0 {
        return Err(failed(name, format!("{isolated_acks} writes through the isolated old leader were acknowledged")));
    }
    Ok(m)
}

/// A follower cut off alone cannot write; after the heal it catches up.
pub fn minority_partition(rig: &dyn Rig, opts: &ScenarioOptions) -> Result<Measured> {
    let name = "minority-partition";
    let hosts = cluster_hosts(rig, opts.nodes, name)?;
    let cluster = Cluster::form(rig, &hosts, None)?;
    let leader = cluster.wait_converged(CONVERGE_TIMEOUT)?;
    let minority = hosts.iter().find(|h| **h != leader).cloned().ok_or_else(|| failed(name, "needs a follower"))?;
    let majority = others(&hosts, &minority);
    let mut m = Measured::default();
    let history = History::new();
    let mut minority_acks = 0usize;
    std::thread::scope(|s| -> Result<()> {
        let w = Workload::spawn(s, rig, majority.clone(), opts.workload.clone(), history.clone());
        rig.partition(&[minority.as_str()], &strs(&majority))?;
        let until = Instant::now() + opts.partition_duration;
        let mut seq = 0;
        while Instant::now() < until {
            seq += 1;
            let call = Call::Put { key: "hil/k1".to_string(), value: format!("minority-{seq}") };
            let out = history.record(902, call, |c| match c {
                Call::Put { key, value } => shoal::kv_put(rig, &minority, key, value, Duration::from_secs(3)),
                Call::Get { .. } => Outcome::Failed,
            });
            if matches!(out, Outcome::Ok(_)) {
                minority_acks += 1;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let leader_index = shoal::status(rig, &leader).map(|s| s.applied_index).unwrap_or(0);
        let heal_at = Instant::now();
        rig.heal()?;
        wait_until(&format!("{minority} catching up"), CONVERGE_TIMEOUT, Duration::from_millis(100), || {
            shoal::status(rig, &minority).is_ok_and(|s| s.applied_index >= leader_index)
        })?;
        m.set("catchup_ms", ms(heal_at, Instant::now()));
        cluster.wait_converged(CONVERGE_TIMEOUT)?;
        m.set("heal_converged_ms", ms(heal_at, Instant::now()));
        w.stop();
        Ok(())
    })?;
    m.set("minority_writes_acked", minority_acks as f64);
    finish(name, rig, &hosts, &history, opts, &mut m)?;
    if minority_acks > 0 {
        return Err(failed(
            name,
            format!("{minority_acks} writes through the cut-off node {minority} were acknowledged"),
        ));
    }
    Ok(m)
}

/// Every node loses power at once, then all come back.
pub fn full_power_cut(rig: &dyn Rig, opts: &ScenarioOptions) -> Result<Measured> {
    let name = "full-power-cut";
    let hosts = cluster_hosts(rig, opts.nodes, name)?;
    let cluster = Cluster::form(rig, &hosts, None)?;
    cluster.wait_converged(CONVERGE_TIMEOUT)?;
    let mut m = Measured::default();
    let history = History::new();
    std::thread::scope(|s| -> Result<()> {
        let w = Workload::spawn(s, rig, hosts.clone(), opts.workload.clone(), history.clone());
        std::thread::sleep(Duration::from_secs(3));
        for h in &hosts {
            rig.power_off(h)?;
        }
        // writes in flight at the cut have unknown outcomes; stop before the restart
        w.stop();
        Ok(())
    })?;
    let on_at = Instant::now();
    for h in &hosts {
        rig.restart(h)?;
    }
    cluster.wait_converged(CONVERGE_TIMEOUT)?;
    m.set("recovery_converged_ms", ms(on_at, Instant::now()));
    let write = write_until_acked(rig, &hosts[0], &history, CONVERGE_TIMEOUT)?;
    m.set("first_write_after_power_on_ms", ms(on_at, Instant::now()));
    m.set("first_write_attempts_ms", write.as_secs_f64() * 1000.0);
    finish(name, rig, &hosts, &history, opts, &mut m)?;
    Ok(m)
}

/// A node joins a running cluster, then a dead voter is replaced by it.
pub fn join_and_replace(rig: &dyn Rig, opts: &ScenarioOptions) -> Result<Measured> {
    let name = "join-and-replace";
    let all = cluster_hosts(rig, opts.nodes + 1, name)?;
    let (initial, newcomer) = (all[..opts.nodes].to_vec(), all[opts.nodes].clone());
    let config = format!("[store]\nvoter_grace = \"{}s\"\n", opts.voter_grace.as_secs().max(1));
    let mut cluster = Cluster::form(rig, &initial, Some(config))?;
    let leader = cluster.wait_converged(CONVERGE_TIMEOUT)?;
    let mut m = Measured::default();
    m.set("voter_grace_s", opts.voter_grace.as_secs_f64());
    let history = History::new();
    let join_at = Instant::now();
    cluster.start_joining(&newcomer)?;
    cluster.wait_converged(CONVERGE_TIMEOUT)?;
    m.set("join_ms", ms(join_at, Instant::now()));
    let st = shoal::status(rig, &leader)?;
    if let Some(member) = st.member(&newcomer) {
        m.note(format!("{newcomer} joined as {}", member.role));
    }
    let victim = st
        .voters()
        .into_iter()
        .find(|v| *v != leader && *v != newcomer)
        .map(str::to_string)
        .ok_or_else(|| failed(name, "no follower voter to kill"))?;
    let survivors = others(&all, &victim);
    let voters_wanted = opts.nodes.min(survivors.len());
    std::thread::scope(|s| -> Result<()> {
        let w = Workload::spawn(s, rig, survivors.clone(), opts.workload.clone(), history.clone());
        std::thread::sleep(Duration::from_secs(1));
        let kill_at = Instant::now();
        rig.power_off(&victim)?;
        let timeout = CONVERGE_TIMEOUT + opts.voter_grace;
        let mut voters = Vec::new();
        wait_until(&format!("{victim} replaced as a voter"), timeout, Duration::from_millis(200), || {
            let Some(l) = cluster.leader_seen_by(&survivors[0]) else { return false };
            let Ok(st) = shoal::status(rig, &l) else { return false };
            voters = st.voters().into_iter().map(str::to_string).collect();
            !voters.contains(&victim)
                && voters.len() == voters_wanted
                && voters.iter().all(|v| st.member(v).is_some_and(|mm| mm.alive))
        })?;
        m.set("replace_ms", ms(kill_at, Instant::now()));
        m.note(format!("killed voter {victim}; voters now {voters:?}"));
        std::thread::sleep(Duration::from_secs(1));
        w.stop();
        Ok(())
    })?;
    finish(name, rig, &survivors, &history, opts, &mut m)?;
    Ok(m)
}

/// One link (the leader's) loses packets for a while.
pub fn packet_loss(rig: &dyn Rig, opts: &ScenarioOptions) -> Result<Measured> {
    let name = "packet-loss";
    let hosts = cluster_hosts(rig, opts.nodes, name)?;
    let cluster = Cluster::form(rig, &hosts, None)?;
    let leader = cluster.wait_converged(CONVERGE_TIMEOUT)?;
    let observer = others(&hosts, &leader).into_iter().next().ok_or_else(|| failed(name, "needs 2 hosts"))?;
    let mut m = Measured::default();
    m.set("loss_percent", opts.loss_percent);
    m.set("loss_duration_s", opts.loss_duration.as_secs_f64());
    let history = History::new();
    std::thread::scope(|s| -> Result<()> {
        let w = Workload::spawn(s, rig, hosts.clone(), opts.workload.clone(), history.clone());
        std::thread::sleep(Duration::from_secs(2));
        let start = Instant::now();
        rig.degrade(&leader, &Netem::loss(opts.loss_percent))?;
        let start_ns = history.at(start);
        let (mut flaps, mut leader_changes) = (0u32, 0u32);
        let (mut last_alive, mut last_leader) = (true, Some(leader.clone()));
        while start.elapsed() < opts.loss_duration {
            if let Ok(st) = shoal::status(rig, &observer) {
                let alive = st.member(&leader).is_some_and(|mm| mm.alive);
                if alive != last_alive {
                    flaps += 1;
                    last_alive = alive;
                }
                if st.leader.is_some() && st.leader != last_leader {
                    leader_changes += 1;
                    last_leader = st.leader.clone();
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let end_ns = history.now_ns();
        rig.restore(&leader)?;
        let sum = summarize(&history.operations(), start_ns, end_ns);
        m.set("lossy_acked_writes", sum.acked_writes as f64);
        m.set("lossy_unknown_writes", sum.unknown_writes as f64);
        m.set("lossy_write_p50_ms", sum.write_p50_ms);
        m.set("lossy_write_p99_ms", sum.write_p99_ms);
        m.set("lossy_max_write_gap_ms", sum.max_write_gap_ms);
        m.set("alive_flaps", f64::from(flaps));
        m.set("leader_changes", f64::from(leader_changes));
        let healed = Instant::now();
        cluster.wait_converged(CONVERGE_TIMEOUT)?;
        m.set("converged_after_restore_ms", ms(healed, Instant::now()));
        w.stop();
        Ok(())
    })?;
    m.note(format!("lossy link: {leader} (the leader at the start), both directions"));
    finish(name, rig, &hosts, &history, opts, &mut m)?;
    Ok(m)
}

/// Every node in turn: stop shoal, install the new binary, start it, wait until it is back,
/// Ready and caught up; under the key-value workload and, on a rig with a client host, a
/// Deployment behind a LoadBalancer Service used by kubectl and HTTP loops (see
/// [`crate::upgrade`]). Starts on the previous build when one is given or can be built.
pub fn rolling_upgrade(rig: &dyn Rig, opts: &ScenarioOptions) -> Result<Measured> {
    let name = "rolling-upgrade";
    let hosts = cluster_hosts(rig, opts.nodes, name)?;
    let mut m = Measured::default();
    let binary = match &opts.upgrade_binary {
        Some(b) => b.clone(),
        None => rig.shoal_path(&hosts[0])?,
    };
    let previous = match (&opts.upgrade_from_bin, &opts.upgrade_from) {
        (Some(b), _) => Some(b.clone()),
        (None, Some(rev)) => match crate::upgrade::previous_binary(rev) {
            Ok(b) => Some(b),
            Err(e) => {
                m.note(format!("no previous build ({e}): the same build was reinstalled"));
                None
            }
        },
        (None, None) => None,
    };
    match &previous {
        Some(p) => {
            for h in &hosts {
                rig.install_binary(h, p)?;
            }
            m.note(format!("upgraded from {} to {}", p.display(), binary.display()));
        }
        None if opts.upgrade_binary.is_none() => {
            m.note("no previous build given: the same build was reinstalled (exercises stop, replace, start)")
        }
        None => {}
    }
    m.set("upgraded_from_previous", if previous.is_some() { 1.0 } else { 0.0 });
    let cluster = Cluster::form(rig, &hosts, None)?;
    let leader = cluster.wait_converged(CONVERGE_TIMEOUT)?;
    let scratch = crate::services::Scratch::new(name)?;
    let app = match rig.client() {
        Some(_) => Some(crate::upgrade::deploy(rig, name, &hosts, &scratch)?),
        None => None,
    };
    let targets = crate::upgrade::Targets::default();
    targets.set(hosts.clone());
    let mut order = others(&hosts, &leader);
    order.push(leader.clone());
    let history = History::new();
    let mut inner = Measured::default();
    let roll = |inner: &mut Measured| {
        std::thread::scope(|s| -> Result<()> {
            let w = Workload::spawn(s, rig, hosts.clone(), opts.workload.clone(), history.clone());
            std::thread::sleep(Duration::from_secs(2));
            let t0 = Instant::now();
            let t0_ns = history.at(t0);
            let mut mixed_seen = false;
            for (i, h) in order.iter().enumerate() {
                let t = Instant::now();
                // clients move away from the node being upgraded, as a load balancer would
                w.set_targets(others(&hosts, h));
                targets.set(others(&hosts, h));
                if app.is_some() {
                    // let kubectl calls already sent to the node finish, as a load balancer drains
                    std::thread::sleep(Duration::from_secs(1));
                }
                rig.stop(h, Duration::from_secs(10))?;
                rig.install_binary(h, &binary)?;
                rig.restart(h)?;
                let leader_now = cluster.wait_converged(CONVERGE_TIMEOUT)?;
                if let Some(app) = &app {
                    app.wait_node_ready(name, h, &leader_now)?;
                }
                crate::upgrade::wait_caught_up(rig, name, h, &leader_now)?;
                w.set_targets(hosts.clone());
                targets.set(hosts.clone());
                inner.set(&format!("upgrade_{h}_ms"), ms(t, Instant::now()));
                if previous.is_some() && i + 1 < order.len() && !mixed_seen {
                    // The upgraded node's `shoal status` warns that versions are mixed.
                    mixed_seen = wait_until(
                        "a mixed-version warning",
                        Duration::from_secs(15),
                        Duration::from_millis(500),
                        || crate::upgrade::status_value(rig, h).is_some_and(|v| v["versions"]["mixed"] == true),
                    )
                    .is_ok();
                }
            }
            inner.set("upgrade_total_ms", ms(t0, Instant::now()));
            if previous.is_some() {
                inner.set("mixed_version_warning_seen", if mixed_seen { 1.0 } else { 0.0 });
            }
            std::thread::sleep(Duration::from_secs(1));
            let sum = summarize(&history.operations(), t0_ns, history.now_ns());
            inner.set("during_upgrade_max_write_gap_ms", sum.max_write_gap_ms);
            inner.set("during_upgrade_unknown_writes", sum.unknown_writes as f64);
            w.stop();
            Ok(())
        })
    };
    match &app {
        Some(app) => crate::upgrade::under_load(app, name, rig, &scratch, &targets, &mut m, || roll(&mut inner))?,
        None => roll(&mut inner)?,
    }
    m.figures.extend(inner.figures);
    m.notes.extend(inner.notes);
    // Once every node runs the new build, they write its peer message format.
    if crate::upgrade::status_value(rig, &hosts[0]).is_some_and(|v| v.get("cluster_format").is_some()) {
        let mut lowest = 0;
        let _ =
            wait_until("every node on the newest format", Duration::from_secs(30), Duration::from_millis(500), || {
                lowest = hosts
                    .iter()
                    .map(|h| {
                        crate::upgrade::status_value(rig, h).and_then(|v| v["cluster_format"].as_u64()).unwrap_or(0)
                    })
                    .min()
                    .unwrap_or(0);
                lowest >= 2
            });
        m.set("cluster_format_after", lowest as f64);
    }
    if let Some(app) = &app {
        app.finish(name, &mut m)?;
    }
    m.note(format!("order: {order:?} (leader last)"));
    finish(name, rig, &hosts, &history, opts, &mut m)?;
    Ok(m)
}
