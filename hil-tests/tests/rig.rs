//! The netns rig itself, driven with a stand-in daemon (`sleep`) so it needs no shoal binary.
//! Needs root (network and pid namespaces, nftables): it fails, loudly, without.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shoal_hil::{Launch, Netem, NetnsOptions, NetnsRig, Rig, Topology};

static SERIAL: Mutex<()> = Mutex::new(());

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the rig tests need root (network namespaces, nftables); run them as root"
    );
}

fn stand_in(dir: &Path, nodes: usize) -> NetnsOptions {
    let mut opts = NetnsOptions::new(dir, nodes, "/nonexistent/shoal");
    opts.daemon_override = Some(vec!["sleep".into(), "1000".into()]);
    opts
}

fn test_dir(name: &str) -> PathBuf {
    PathBuf::from("/tmp/shoal-hil-tests").join(name)
}

/// Connects with bash's /dev/tcp to a port nobody listens on: a reachable host refuses at once,
/// an unreachable one lets the attempt time out.
fn reachable(rig: &dyn Rig, from: &str, to: &str) -> bool {
    let addr = rig.address(to).unwrap();
    let out =
        rig.exec_timeout(from, &["bash", "-c", &format!("exec 3<>/dev/tcp/{addr}/9")], Duration::from_secs(2)).unwrap();
    assert!(!out.success(), "nothing listens on port 9");
    !out.timed_out() && out.stderr.contains("refused")
}

fn proc_state(pid: i32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()).unwrap_or('?')
}

fn namespaces_with(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn hosts_start_stop_power_cut_freeze_partition_degrade_and_go_away() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_root();
    let dir = test_dir("rig-basics");
    let mut opts = stand_in(&dir, 3);
    opts.client = true;
    let rig = NetnsRig::up(opts).unwrap();
    let prefix = format!("shoal-{}-", rig.info().name);
    assert_eq!(namespaces_with(&prefix).len(), 5, "switch, 3 hosts, client");
    assert_eq!(rig.hosts(), ["n1", "n2", "n3"]);
    assert_eq!(rig.client().as_deref(), Some("client"));
    assert_eq!(rig.address("n2").unwrap().to_string(), "10.77.0.2");
    assert!(rig.data_dir("n1").unwrap().starts_with(&dir));

    for h in rig.hosts() {
        rig.start(&h, &Launch::default()).unwrap();
        assert!(rig.is_running(&h).unwrap());
    }
    // each host has its own pid namespace: it sees its init, its daemon and the command itself
    let ps = rig.exec("n1", &["ps", "-e", "-o", "pid=,comm="]).unwrap();
    assert!(ps.success(), "{ps:?}");
    assert!(ps.stdout.lines().any(|l| l.trim() == "1 bash"), "{}", ps.stdout);
    assert!(ps.stdout.contains("sleep"));
    assert!(ps.stdout.lines().count() <= 5, "{}", ps.stdout);

    assert!(reachable(&rig, "n1", "n2"));
    assert!(reachable(&rig, "client", "n3"));

    // power cut: everything of the host is gone at once, its neighbours are untouched
    let daemon = rig.daemon_pid("n1").unwrap().unwrap();
    rig.power_off("n1").unwrap();
    assert!(!rig.is_running("n1").unwrap());
    assert!(!Path::new(&format!("/proc/{daemon}")).exists() || proc_state(daemon) == 'Z');
    assert!(rig.init_pid("n1").unwrap().is_none());
    assert!(rig.is_running("n2").unwrap());
    rig.restart("n1").unwrap();
    assert!(rig.is_running("n1").unwrap());
    rig.power_cycle("n1").unwrap();
    assert!(rig.is_running("n1").unwrap());

    // freeze and thaw
    let daemon = rig.daemon_pid("n2").unwrap().unwrap();
    rig.freeze("n2").unwrap();
    assert_eq!(proc_state(daemon), 'T');
    rig.thaw("n2").unwrap();
    assert_ne!(proc_state(daemon), 'T');

    // partition {n1} from {n2, n3}; n2 and n3 still talk; heal
    rig.partition(&["n1"], &["n2", "n3"]).unwrap();
    assert!(!reachable(&rig, "n1", "n2"));
    assert!(!reachable(&rig, "n3", "n1"));
    assert!(reachable(&rig, "n2", "n3"));
    rig.heal().unwrap();
    assert!(reachable(&rig, "n1", "n2"));

    // a link that loses everything, then restored
    rig.degrade("n3", &Netem::loss(100.0)).unwrap();
    assert!(!reachable(&rig, "n1", "n3"));
    assert!(reachable(&rig, "n1", "n2"));
    rig.restore("n3").unwrap();
    assert!(reachable(&rig, "n1", "n3"));

    // graceful stop
    rig.stop("n3", Duration::from_secs(5)).unwrap();
    assert!(!rig.is_running("n3").unwrap());

    rig.down().unwrap();
    assert!(namespaces_with(&prefix).is_empty());
    assert!(!dir.exists());
}

#[test]
fn a_stale_rig_from_a_crashed_run_is_removed_by_the_next_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_root();
    let dir = test_dir("rig-stale");
    let old = NetnsRig::up(stand_in(&dir, 2)).unwrap();
    old.start("n1", &Launch::default()).unwrap();
    let old_daemon = old.daemon_pid("n1").unwrap().unwrap();
    let old_state = dir.join("n1").join("data").join("left-by-the-crashed-run");
    std::fs::write(&old_state, b"x").unwrap();
    let prefix = format!("shoal-{}-", old.info().name);
    old.keep();
    drop(old); // as a crashed run would leave it
    assert_eq!(namespaces_with(&prefix).len(), 3);

    // another process can still see and remove it
    let reopened = NetnsRig::open(&dir).unwrap();
    assert_eq!(reopened.hosts(), ["n1", "n2"]);
    assert!(reopened.is_running("n1").unwrap());
    drop(reopened);

    let fresh = NetnsRig::up(stand_in(&dir, 2)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{old_daemon}")).exists()
        && proc_state(old_daemon) != 'Z'
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !Path::new(&format!("/proc/{old_daemon}")).exists() || proc_state(old_daemon) == 'Z',
        "old daemon survived"
    );
    assert_eq!(namespaces_with(&prefix).len(), 3, "only the fresh rig's namespaces");
    assert!(!fresh.is_running("n1").unwrap());
    assert!(!old_state.exists(), "a fresh rig starts its hosts with empty data dirs");
    drop(fresh); // tears down
    assert!(namespaces_with(&prefix).is_empty());

    // down_dir on a dir with a rig left behind
    let left = NetnsRig::up(stand_in(&dir, 1)).unwrap();
    left.keep();
    drop(left);
    NetnsRig::down_dir(&dir).unwrap();
    assert!(namespaces_with(&prefix).is_empty());
    assert!(!dir.exists());
}

#[test]
fn routed_topology_reaches_across_the_router() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    require_root();
    let mut opts = stand_in(&test_dir("rig-routed"), 4);
    opts.topology = Topology::Routed;
    let rig = NetnsRig::up(opts).unwrap();
    assert_eq!(rig.address("n1").unwrap().to_string(), "10.77.0.1");
    assert_eq!(rig.address("n4").unwrap().to_string(), "10.77.1.4");
    assert!(reachable(&rig, "n1", "n4"));
    assert!(reachable(&rig, "n3", "n2"));
    rig.partition(&["n1", "n2"], &["n3", "n4"]).unwrap();
    assert!(!reachable(&rig, "n1", "n4"));
    rig.heal().unwrap();
    assert!(reachable(&rig, "n1", "n4"));
}

#[test]
fn cli_says_clearly_when_the_shoal_binary_is_missing() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shoal-hil"))
        .args(["rig", "up", "--nodes", "1", "--dir", "/tmp/shoal-hil-tests/cli-missing"])
        .env("SHOAL_BIN", "/nonexistent/shoal")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("shoal binary is missing"), "{stderr}");
}
