//! The scenario machinery (cluster forming, workloads, histories, the checker, results) against
//! `tests/fake-shoal.sh`, a stand-in CLI whose nodes share one store directory. It needs root but
//! not the shoal binary. The fake never notices partitions, so the partition scenarios must catch
//! it acknowledging writes through a cut-off node: that checks the suite fails when it should.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use shoal_hil::scenarios::{self, ScenarioOptions};
use shoal_hil::{NetnsOptions, NetnsRig, Rig};

static SERIAL: Mutex<()> = Mutex::new(());

fn fake() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("fake-shoal.sh")
}

fn run(name: &str) -> shoal_hil::results::ScenarioRecord {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    assert!(nix::unistd::geteuid().is_root(), "needs root (network and pid namespaces)");
    let opts = ScenarioOptions {
        loss_duration: Duration::from_secs(3),
        partition_duration: Duration::from_secs(2),
        voter_grace: Duration::from_secs(1),
        ..ScenarioOptions::default()
    };
    let dir = PathBuf::from("/tmp/shoal-hil-tests").join(format!("fake-{name}"));
    let rig = NetnsRig::up(NetnsOptions::new(&dir, scenarios::hosts_needed(name, &opts), fake())).unwrap();
    let record = scenarios::run_recorded(name, &rig, &opts);
    eprintln!("{record:#?}");
    rig.down().unwrap();
    record
}

fn assert_passed(record: &shoal_hil::results::ScenarioRecord) {
    assert!(record.passed, "{:?}", record.error);
    assert_eq!(record.figures.get("linearizable"), Some(&1.0));
    assert!(record.figures.get("acked_writes").is_some_and(|n| *n > 0.0) || record.scenario == "cluster-forms");
}

#[test]
fn cluster_forms_with_the_fake() {
    let r = run("cluster-forms");
    assert!(r.passed, "{:?}", r.error);
    assert_eq!(r.figures.get("members"), Some(&3.0));
}

#[test]
fn leader_killed_with_the_fake() {
    let r = run("leader-killed");
    assert_passed(&r);
    assert!(r.figures.contains_key("failover_write_ms"));
}

#[test]
fn full_power_cut_with_the_fake() {
    assert_passed(&run("full-power-cut"));
}

#[test]
fn join_and_replace_with_the_fake() {
    let r = run("join-and-replace");
    assert_passed(&r);
    assert!(r.figures.contains_key("replace_ms"));
}

#[test]
fn packet_loss_with_the_fake() {
    let r = run("packet-loss");
    assert_passed(&r);
    assert!(r.figures.contains_key("lossy_write_p99_ms"));
}

#[test]
fn rolling_upgrade_with_the_fake() {
    let r = run("rolling-upgrade");
    assert_passed(&r);
    assert!(r.figures.contains_key("upgrade_total_ms"));
}

#[test]
fn a_store_that_ignores_partitions_fails_the_partition_scenarios() {
    let r = run("minority-partition");
    assert!(!r.passed);
    assert!(r.error.as_deref().unwrap_or("").contains("were acknowledged"), "{:?}", r.error);
    let r = run("leader-partitioned");
    assert!(!r.passed);
    assert!(r.error.as_deref().unwrap_or("").contains("were acknowledged"), "{:?}", r.error);
}

#[test]
fn rig_up_status_and_down_through_the_cli() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = "/tmp/shoal-hil-tests/fake-cli";
    let cli = env!("CARGO_BIN_EXE_shoal-hil");
    let up = std::process::Command::new(cli)
        .args(["rig", "up", "--nodes", "3", "--dir", dir])
        .env("SHOAL_BIN", fake())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&up.stdout);
    assert!(up.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&up.stderr));
    assert!(stdout.contains(&format!("kubeconfig: {dir}/kubeconfig")), "{stdout}");
    assert!(Path::new(dir).join("kubeconfig").exists());
    let status = std::process::Command::new(cli).args(["rig", "status", "--dir", dir]).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("n3 10.77.0.3 running: leader n1"), "{text}");
    let exec = std::process::Command::new(cli)
        .args(["rig", "exec", "n2", "--dir", dir, "--", "hostname", "-I"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&exec.stdout).contains("10.77.0.2"));
    let down = std::process::Command::new(cli).args(["rig", "down", "--dir", dir]).output().unwrap();
    assert!(down.status.success());
    assert!(!Path::new(dir).exists());
}
