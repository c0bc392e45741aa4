//! The scenario suite on netns rigs with the real shoal binary, one scenario per test, one at a
//! time. Each records its figures in the results file (`shoal-hil report` turns them into a report).
//!
//! They need root and the shoal binary ($SHOAL_BIN, else target/debug/shoal, else
//! target/release/shoal) and fail with a clear message without them. The only way to skip them is
//! to set SHOAL_HIL_SKIP_SCENARIOS=1, which each test then says it did.

use std::path::PathBuf;
use std::sync::Mutex;

use shoal_hil::results::{default_out_dir, ResultsFile};
use shoal_hil::scenarios::{self, ScenarioOptions};
use shoal_hil::{NetnsOptions, NetnsRig, Rig};

static SERIAL: Mutex<()> = Mutex::new(());

fn scenario(name: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if std::env::var_os("SHOAL_HIL_SKIP_SCENARIOS").is_some_and(|v| !v.is_empty() && v != "0") {
        eprintln!("SKIPPED scenario {name}: SHOAL_HIL_SKIP_SCENARIOS is set");
        return;
    }
    assert!(nix::unistd::geteuid().is_root(), "scenario {name} needs root (network and pid namespaces, nftables)");
    let bin = match shoal_hil::shoal::find_shoal_bin() {
        Ok(bin) => bin,
        Err(e) => panic!("scenario {name}: {e}"),
    };
    let mut opts = ScenarioOptions::for_tests();
    if let Some(d) = std::env::var("SHOAL_HIL_LOSS_SECS").ok().and_then(|s| s.parse().ok()) {
        opts.loss_duration = std::time::Duration::from_secs(d);
    }
    opts.upgrade_binary = std::env::var_os("SHOAL_UPGRADE_BIN").map(PathBuf::from);
    // Opt-in (building the previous commit costs minutes): SHOAL_UPGRADE_FROM=<commit>|release,
    // or SHOAL_UPGRADE_FROM_BIN=<a previous shoal binary>.
    opts.upgrade_from = std::env::var("SHOAL_UPGRADE_FROM").ok().filter(|s| !s.is_empty());
    opts.upgrade_from_bin = std::env::var_os("SHOAL_UPGRADE_FROM_BIN").filter(|s| !s.is_empty()).map(PathBuf::from);
    opts.hil_bin = Some(PathBuf::from(env!("CARGO_BIN_EXE_shoal-hil")));
    let dir = PathBuf::from("/tmp/shoal-hil-tests").join(name);
    let mut rig_opts = NetnsOptions::new(&dir, scenarios::hosts_needed(name, &opts), bin);
    rig_opts.client = scenarios::needs_client(name);
    rig_opts.topology = scenarios::topology(name);
    if rig_opts.client {
        // pods need a node without DiskPressure, whatever this machine's disk holds
        rig_opts.tmpfs_mb = rig_opts.tmpfs_mb.or(Some(3072));
    }
    let rig = NetnsRig::up(rig_opts).expect("rig up");
    let record = scenarios::run_recorded(name, &rig, &opts);
    if !record.passed {
        for h in rig.hosts() {
            let log = std::fs::read_to_string(rig.log_path(&h)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- {h} log (last lines) ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
    for (k, v) in &record.figures {
        eprintln!("{name} {k}: {v}");
    }
    if let Err(e) = ResultsFile::record(&default_out_dir(), record.clone()) {
        eprintln!("cannot record results: {e}");
    }
    rig.down().expect("rig down");
    assert!(record.passed, "scenario {name} failed: {}", record.error.unwrap_or_default());
}

#[test]
fn cluster_forms() {
    scenario("cluster-forms");
}

#[test]
fn leader_killed() {
    scenario("leader-killed");
}

#[test]
fn leader_partitioned_and_healed() {
    scenario("leader-partitioned");
}

#[test]
fn minority_partition_cannot_write_and_catches_up() {
    scenario("minority-partition");
}

#[test]
fn full_power_cut() {
    scenario("full-power-cut");
}

#[test]
fn join_and_replace_a_dead_voter() {
    scenario("join-and-replace");
}

#[test]
fn packet_loss_on_one_link() {
    scenario("packet-loss");
}

#[test]
fn rolling_upgrade_under_writes() {
    scenario("rolling-upgrade");
}

#[test]
fn clock_jumps_and_skewed_clocks() {
    scenario("clock-jump");
}

#[test]
fn lb_failover() {
    scenario("lb-failover");
}

#[test]
fn pods_back() {
    scenario("pods-back");
}

#[test]
fn routed_pods() {
    scenario("routed-pods");
}

#[test]
fn services_acceptance() {
    scenario("services");
}

#[test]
fn ingress_walkthrough() {
    scenario("ingress");
}

/// Forged gossip from a LAN host changes nothing; a gossip key rotation flaps no one.
#[test]
fn attacks() {
    scenario("attacks");
}

#[test]
fn witness_two_nodes_and_a_witness() {
    scenario("witness");
}

/// NetworkPolicy on three nodes: deny-all, allow from a namespace and from some pods, only a
/// port (also through a ClusterIP), deny egress with allow-DNS, deny external egress.
#[test]
fn netpol() {
    scenario("netpol");
}
