//! Root tests of the cgroup v2 core on the machine's cgroup2 mount: placing processes, freeze
//! and thaw, kill, and the eBPF device filter. The controllers (memory, cpu, pids) need a v2
//! hierarchy that owns them and are not tested here.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use shoal_runtime::oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType};
use shoal_runtime::Cgroup2;

fn busybox() -> &'static str {
    ["/bin/busybox", "/usr/bin/busybox"].into_iter().find(|p| Path::new(p).exists()).expect("install busybox-static")
}

/// A cgroup of the test's own, killed and removed on drop.
struct TestCgroup {
    cg: Cgroup2,
    path: String,
}

impl TestCgroup {
    fn new(name: &str) -> TestCgroup {
        assert!(nix::unistd::geteuid().is_root(), "these tests need root");
        let cg = Cgroup2::detect().expect("this test needs a cgroup2 mount in /proc/mounts");
        let path = format!("shoal-test-{}-{name}", std::process::id());
        cg.create(&path).expect("create cgroup");
        TestCgroup { cg, path }
    }

    fn dir(&self) -> PathBuf {
        self.cg.dir(&self.path)
    }

    /// Runs `script` with busybox sh inside the cgroup (the shell moves itself in first).
    fn command(&self, script: &str) -> Command {
        let mut cmd = Command::new(busybox());
        cmd.arg("sh")
            .arg("-c")
            .arg(format!("echo 0 > \"$CG/cgroup.procs\" || exit 99; {script}"))
            .env("CG", self.dir())
            .env("PATH", "/bin:/usr/bin");
        cmd
    }

    fn output(&self, script: &str) -> Output {
        self.command(script).output().expect("run busybox")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = self.cg.set_frozen(&self.path, false, Duration::from_secs(5));
        let _ = self.cg.kill(&self.path);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cg.populated(&self.path).unwrap_or(false) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.cg.remove(&self.path);
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn processes_are_placed_frozen_thawed_and_killed() {
    let t = TestCgroup::new("freeze");
    let tmp = tempfile::tempdir().unwrap();
    let ticks = tmp.path().join("ticks");
    let mut child = t
        .command("exec sh -c 'while true; do echo x >> \"$F\"; sleep 0.01; done'")
        .env("F", &ticks)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let size = || std::fs::metadata(&ticks).map(|m| m.len()).unwrap_or(0);
    wait_for("the shell in the cgroup", || t.cg.processes(&t.path).unwrap().contains(&child.id()));
    assert!(t.cg.populated(&t.path).unwrap());
    wait_for("ticks", || size() > 2);

    t.cg.set_frozen(&t.path, true, Duration::from_secs(10)).expect("freeze");
    assert!(t.cg.frozen(&t.path).unwrap());
    let frozen_at = size();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(size(), frozen_at, "a frozen process made progress");

    t.cg.set_frozen(&t.path, false, Duration::from_secs(10)).expect("thaw");
    assert!(!t.cg.frozen(&t.path).unwrap());
    wait_for("ticks after thaw", || size() > frozen_at);

    t.cg.kill(&t.path).expect("kill");
    let status = child.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
    wait_for("the cgroup to empty", || !t.cg.populated(&t.path).unwrap());
    assert!(t.cg.processes(&t.path).unwrap().is_empty());
}

fn rule(allow: bool, typ: LinuxDeviceType, major: i64, minor: i64, access: &str) -> LinuxDeviceCgroup {
    LinuxDeviceCgroupBuilder::default().allow(allow).typ(typ).major(major).minor(minor).access(access).build().unwrap()
}

#[test]
fn device_filter_allows_and_denies_per_device_and_is_replaced() {
    let t = TestCgroup::new("devices");
    let probe = "cat /dev/null && echo null-ok; head -c 3 /dev/zero | wc -c; echo x > /dev/full; true";
    let deny_all = rule(false, LinuxDeviceType::A, -1, -1, "rwm");

    // Only /dev/zero (1:5), and only for reading.
    t.cg.set_device_rules(&t.path, &[deny_all.clone(), rule(true, LinuxDeviceType::C, 1, 5, "r")]).expect("rules");
    let out = t.output(probe);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout.split_whitespace().collect::<Vec<_>>(), vec!["3"], "stderr: {stderr}");
    assert!(stderr.contains("/dev/null") && stderr.contains("Operation not permitted"), "{stderr}");
    assert!(stderr.contains("/dev/full"), "{stderr}");

    // Replaced: /dev/null and /dev/full now, /dev/zero no more (the old program is detached,
    // or it would still deny /dev/null).
    t.cg.set_device_rules(
        &t.path,
        &[deny_all, rule(true, LinuxDeviceType::C, 1, 3, "rwm"), rule(true, LinuxDeviceType::C, 1, 7, "w")],
    )
    .expect("rules");
    let out = t.output(probe);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout.split_whitespace().collect::<Vec<_>>(), vec!["null-ok", "0"], "stderr: {stderr}");
    assert!(stderr.contains("/dev/zero") && !stderr.contains("/dev/null") && !stderr.contains("/dev/full"), "{stderr}");

    // A process outside the cgroup is not affected.
    let outside = Command::new(busybox()).args(["sh", "-c", "cat /dev/null && echo null-ok"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&outside.stdout).trim(), "null-ok");
}
