//! The ssh rig, for real: "boards" that are network namespaces on this machine, each with its own
//! pid and mount namespace and its own Debian `sshd` (host keys, authorized key and config made
//! here), reached over ssh from this machine through a bridge on `10.78.0.0/24`. The test writes
//! the rig file as a bench owner would and drives [`SshRig`] through the same scenario code as the
//! netns rig.
//!
//! Each board sees its own filesystem at the same path (`DIR/board`, a bind mount of
//! `DIR/bN/root` inside the board's mount namespace), so every board has the same `remote_binary`
//! and `data_dir`, as real boards do. The bench dir is a tmpfs, so the boards' copies of the binary
//! cost memory, not disk; it outlives a board's power cut as a board's disk would.
//!
//! Needs root, `sshd` (openssh-server), `ssh`, `ssh-keygen` and the shoal binary ($SHOAL_BIN, else
//! target/debug/shoal). The scenarios are skipped (and say so) only with SHOAL_HIL_SKIP_SCENARIOS=1.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use shoal_hil::scenarios::{self, ScenarioOptions};
use shoal_hil::{Arch, Outcome, Rig, SshRig, SshRigFile};

static SERIAL: Mutex<()> = Mutex::new(());

const SUBNET: &str = "10.78.0";
const ACCESS_LINK: &str = "shoalssh0";
const SWITCH: &str = "shoalssh-sw";

fn sh(script: &str) -> std::process::Output {
    Command::new("sh").args(["-c", script]).stdin(Stdio::null()).output().expect("run sh")
}

fn sh_ok(script: &str) -> String {
    let out = sh(script);
    assert!(out.status.success(), "`{script}` failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Kills every process of a network namespace and deletes it; nothing if it does not exist.
fn remove_netns(name: &str) {
    if !Path::new("/run/netns").join(name).exists() {
        return;
    }
    for _ in 0..50 {
        let pids = sh(&format!("ip netns pids {name}"));
        let pids = String::from_utf8_lossy(&pids.stdout).into_owned();
        if pids.trim().is_empty() {
            break;
        }
        for pid in pids.split_whitespace() {
            let _ = sh(&format!("kill -CONT {pid}; kill -9 {pid}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = sh(&format!("ip netns del {name}"));
}

/// Boards in namespaces, torn down when dropped (also after a failed assertion).
struct Bench {
    dir: PathBuf,
    boards: Vec<String>,
}

impl Bench {
    fn netns(board: &str) -> String {
        format!("shoalssh-{board}")
    }

    fn cleanup(dir: &Path, boards: &[String]) {
        for b in boards {
            remove_netns(&Self::netns(b));
        }
        remove_netns(SWITCH);
        if Path::new("/sys/class/net").join(ACCESS_LINK).exists() {
            let _ = sh(&format!("ip link del {ACCESS_LINK}"));
        }
        if Path::new(dir).exists() {
            let _ = sh(&format!("mountpoint -q {0} && umount -l {0}; true", dir.display()));
        }
        for b in boards {
            let _ = sh(&format!(
                "for c in /sys/fs/cgroup/shoal-{b} /sys/fs/cgroup/*/shoal-{b}; do \
                 [ -d \"$c\" ] && find \"$c\" -depth -type d -exec rmdir {{}} \\; 2>/dev/null; done; true"
            ));
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Builds `n` boards `b1..bN` at `10.78.0.1..N`, each running its own sshd; this machine gets
    /// `10.78.0.254` on their bridge.
    fn up(name: &str, n: usize) -> Bench {
        assert!(nix::unistd::geteuid().is_root(), "the ssh rig test needs root (namespaces)");
        for tool in ["/usr/sbin/sshd", "/usr/bin/ssh", "/usr/bin/ssh-keygen"] {
            assert!(Path::new(tool).exists(), "{tool} is missing: apt-get install openssh-server openssh-client");
        }
        let dir = PathBuf::from("/tmp/shoal-hil-tests").join(name);
        let boards: Vec<String> = (1..=n).map(|i| format!("b{i}")).collect();
        // a bench left by a crashed run (all boards it may have had)
        let stale: Vec<String> = (1..=9).map(|i| format!("b{i}")).collect();
        Self::cleanup(&dir, &stale);
        let taken = sh_ok(&format!("ip -br addr | grep -w '{SUBNET}\\.[0-9]*' || true"));
        assert!(taken.trim().is_empty(), "{SUBNET}.0/24 is already in use on this machine: {taken}");
        let bench = Bench { dir: dir.clone(), boards: boards.clone() };
        // the bench lives in memory: boards get copies of the binary without filling the disk
        std::fs::create_dir_all(&dir).expect("create bench dir");
        sh_ok(&format!("mount -t tmpfs -o size=2g,mode=0755 shoal-ssh-bench {}", dir.display()));
        std::fs::create_dir_all(dir.join("board")).expect("create bench dir");
        let d = dir.display();
        sh_ok(&format!("ssh-keygen -q -t ed25519 -N '' -C hil -f {d}/id && cp {d}/id.pub {d}/authorized_keys"));
        sh_ok(&format!(
            "ip netns add {SWITCH} && ip -n {SWITCH} link set lo up && \
             ip -n {SWITCH} link add br0 type bridge && ip -n {SWITCH} link set br0 up && \
             ip -n {SWITCH} link add host type veth peer name {ACCESS_LINK} netns 1 && \
             ip -n {SWITCH} link set host master br0 up && \
             ip addr add {SUBNET}.254/24 dev {ACCESS_LINK} && ip link set {ACCESS_LINK} up"
        ));
        let mut known_hosts = String::new();
        for (i, b) in boards.iter().enumerate() {
            let ns = Self::netns(b);
            let addr = format!("{SUBNET}.{}", i + 1);
            let bdir = dir.join(b);
            std::fs::create_dir_all(bdir.join("root")).expect("create board dir");
            let bd = bdir.display();
            sh_ok(&format!(
                "ip netns add {ns} && ip -n {ns} link set lo up && \
                 ip -n {SWITCH} link add {b} type veth peer name eth0 netns {ns} && \
                 ip -n {SWITCH} link set {b} master br0 up && \
                 ip -n {ns} addr add {addr}/24 dev eth0 && ip -n {ns} link set eth0 up && \
                 ssh-keygen -q -t ed25519 -N '' -C {b} -f {bd}/host_key"
            ));
            let host_key = std::fs::read_to_string(bdir.join("host_key.pub")).expect("host key");
            let mut parts = host_key.split_whitespace();
            known_hosts.push_str(&format!(
                "{addr} {} {}\n",
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default()
            ));
            std::fs::write(
                bdir.join("sshd_config"),
                format!(
                    "ListenAddress {addr}:22\nHostKey {bd}/host_key\nPidFile {bd}/sshd.pid\n\
                     AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
                     PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                     UsePAM no\nStrictModes no\nMaxSessions 64\nMaxStartups 64:30:128\n\
                     Subsystem sftp internal-sftp\nLogLevel ERROR\n"
                ),
            )
            .expect("write sshd_config");
            // the board's "firmware": its own filesystem at the shared path, sshd, an init that reaps
            std::fs::write(
                bdir.join("boot.sh"),
                format!(
                    "trap '' TERM HUP INT\nmount --bind {bd}/root {d}/board\nmkdir -p /run/sshd\n\
                     /usr/sbin/sshd -f {bd}/sshd_config -E {bd}/sshd.log\n\
                     while :; do sleep 3600 & wait $!; done\n"
                ),
            )
            .expect("write boot.sh");
            // power on: the board boots detached from whoever turns it on
            std::fs::write(
                bdir.join("power-on.sh"),
                format!(
                    "setsid nsenter --net=/run/netns/{ns} unshare --pid --fork --kill-child --mount-proc \
                     bash {bd}/boot.sh </dev/null >/dev/null 2>&1 &\n"
                ),
            )
            .expect("write power-on.sh");
            sh_ok(&format!("sh {bd}/power-on.sh"));
        }
        std::fs::write(dir.join("known_hosts"), known_hosts).expect("write known_hosts");
        bench
    }

    /// The rig file a bench owner would write for these boards.
    fn rig_file(&self, shoal: &Path, with_power_commands: bool) -> PathBuf {
        let d = self.dir.display();
        let arch = Arch::host().expect("shoal builds for this machine's arch");
        let mut text = format!(
            "# boards of the ssh rig test\n\
             name = \"netns-ssh-bench\"\n\
             ssh_options = [\"-i\", \"{d}/id\", \"-o\", \"UserKnownHostsFile={d}/known_hosts\",\n\
             \x20              \"-o\", \"GlobalKnownHostsFile=/dev/null\", \"-o\", \"StrictHostKeyChecking=yes\"]\n\
             binary_{arch} = \"{bin}\"\n\
             remote_binary = \"{d}/board/bin/shoal\"\n\
             launcher = \"process\"\n",
            arch = arch.as_str(),
            bin = shoal.file_name().and_then(|f| f.to_str()).unwrap_or("shoal"),
        );
        for (i, b) in self.boards.iter().enumerate() {
            text.push_str(&format!(
                "\n[[host]]\nname = \"{b}\"\naddress = \"{SUBNET}.{}\"\nuser = \"root\"\narch = \"{}\"\n\
                 interface = \"eth0\"\ndata_dir = \"{d}/board/data\"\n",
                i + 1,
                arch.as_str()
            ));
            if with_power_commands {
                text.push_str(&format!(
                    "power_off_command = \"for i in 1 2 3 4 5; do ip netns pids {ns} | xargs -r kill -9 2>/dev/null; done; true\"\n\
                     power_on_command = \"sh {d}/{b}/power-on.sh\"\n",
                    ns = Self::netns(b)
                ));
            }
        }
        let path = self.dir.join("bench.toml");
        std::fs::write(&path, text).expect("write rig file");
        path
    }

    /// A stripped copy of the shoal binary next to the rig file (what a release would ship).
    fn shoal_binary(&self) -> PathBuf {
        let bin = shoal_hil::shoal::find_shoal_bin().unwrap_or_else(|e| panic!("{e}"));
        let copy = self.dir.join("shoal");
        let stripped = sh(&format!("strip -o {} {}", copy.display(), bin.display()));
        if !stripped.status.success() {
            std::fs::copy(&bin, &copy).expect("copy shoal");
        }
        copy
    }

    /// sshd log of a board, for failures.
    fn sshd_log(&self, board: &str) -> String {
        std::fs::read_to_string(self.dir.join(board).join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        Self::cleanup(&self.dir, &self.boards);
    }
}

fn skip_scenarios(what: &str) -> bool {
    if std::env::var_os("SHOAL_HIL_SKIP_SCENARIOS").is_some_and(|v| !v.is_empty() && v != "0") {
        eprintln!("SKIPPED {what}: SHOAL_HIL_SKIP_SCENARIOS is set");
        return true;
    }
    false
}

fn print_logs(rig: &SshRig, bench: &Bench) {
    for h in rig.hosts() {
        eprintln!("--- shoal on {h} (last lines) ---\n{}", rig.log_tail(&h, 30).unwrap_or_default());
        eprintln!("--- sshd of {h} ---\n{}", bench.sshd_log(&h));
    }
}

#[test]
fn scenarios_run_on_boards_over_ssh() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if skip_scenarios("the ssh rig scenarios") {
        return;
    }
    let bench = Bench::up("ssh-rig", 3);
    let bin = bench.shoal_binary();
    let file = SshRigFile::load(&bench.rig_file(&bin, false)).expect("rig file");
    assert_eq!(format!("{:?}", file.launcher), "Process");
    let rig = SshRig::new(file);
    assert_eq!(rig.hosts(), ["b1", "b2", "b3"]);
    assert_eq!(rig.info().kind, "ssh");

    // each board is its own machine: its own processes, its own filesystem at the same path
    for h in rig.hosts() {
        let ps =
            rig.exec(&h, &["sh", "-c", "cat /proc/1/comm; ls -d /proc/[0-9]* | wc -l; ip -br addr show eth0"]).unwrap();
        assert!(ps.success(), "ssh to {h}: {ps:?}\n{}", bench.sshd_log(&h));
        let lines: Vec<&str> = ps.stdout.lines().collect();
        assert_eq!(lines[0], "bash", "{h}: pid 1 is the board's init");
        assert!(lines[1].trim().parse::<usize>().unwrap_or(1000) < 30, "{h} sees only its own processes");
        assert!(lines[2].contains(&rig.address(&h).unwrap().to_string()), "{h}: {}", lines[2]);
    }
    rig.exec("b1", &["sh", "-c", &format!("echo b1 > {}/board/who", bench.dir.display())]).unwrap();
    let who = rig.exec("b2", &["sh", "-c", &format!("cat {}/board/who 2>&1", bench.dir.display())]).unwrap();
    assert!(!who.success(), "b2 must not see b1's files: {who:?}");

    let opts = ScenarioOptions::for_tests();
    let mut failures = Vec::new();
    for name in ["cluster-forms", "leader-killed"] {
        rig.down().expect("clean boards");
        let record = scenarios::run_recorded(name, &rig, &opts);
        eprintln!("{name} on the ssh rig: {}", if record.passed { "passed" } else { "FAILED" });
        for (k, v) in &record.figures {
            eprintln!("  {name} {k}: {v}");
        }
        for note in &record.notes {
            eprintln!("  {name} note: {note}");
        }
        assert_eq!(record.rig.kind, "ssh");
        if !record.passed {
            print_logs(&rig, &bench);
            failures.push(format!("{name}: {}", record.error.unwrap_or_default()));
        }
    }

    // a power cut over ssh takes shoal down at once; the board itself stays reachable
    if failures.is_empty() {
        let h = "b2";
        assert!(rig.is_running(h).unwrap());
        rig.power_off(h).unwrap();
        assert!(!rig.is_running(h).unwrap());
        let left = rig.exec(h, &["sh", "-c", "for d in /proc/[0-9]*; do readlink $d/exe; done"]).unwrap();
        assert!(!left.stdout.contains("/board/bin/shoal"), "shoal processes left after the cut: {}", left.stdout);
        rig.restart(h).unwrap();
        assert!(rig.is_running(h).unwrap());
        rig.stop(h, Duration::from_secs(10)).unwrap();
        assert!(!rig.is_running(h).unwrap());

        // freeze and thaw: shoal's processes stop and go on
        let state = |h: &str| {
            let script = format!(
                "for d in /proc/[0-9]*; do [ \"$(readlink $d/exe)\" = {}/board/bin/shoal ] && \
                 sed -n 's/^State:[[:space:]]*\\(.\\).*/\\1/p' $d/status; done",
                bench.dir.display()
            );
            rig.exec(h, &["sh", "-c", &script]).unwrap().stdout.trim().to_string()
        };
        rig.freeze("b3").unwrap();
        assert!(!state("b3").is_empty() && state("b3").chars().all(|c| c == 'T'), "frozen: {}", state("b3"));
        rig.thaw("b3").unwrap();
        assert!(!state("b3").contains('T'), "thawed: {}", state("b3"));

        // partition {b1} | {b2, b3}: b1 cannot reach b2, b2 still reaches b3, ssh from here works
        let reaches = |from: &str, to: &str| {
            let addr = rig.address(to).unwrap();
            let out = rig
                .exec_timeout(from, &["bash", "-c", &format!("exec 3<>/dev/tcp/{addr}/9")], Duration::from_secs(2))
                .unwrap();
            !out.timed_out() && out.stderr.contains("refused")
        };
        assert!(reaches("b1", "b2"));
        rig.partition(&["b1"], &["b2", "b3"]).unwrap();
        assert!(!reaches("b1", "b2"));
        assert!(reaches("b2", "b3"));
        rig.heal().unwrap();
        assert!(reaches("b1", "b2"));
    }

    rig.down().expect("rig down");
    let data = rig.exec("b1", &["sh", "-c", &format!("ls {}/board/", bench.dir.display())]).unwrap();
    assert!(!data.stdout.contains("data"), "rig down wipes the data dir: {}", data.stdout);
    drop(rig);
    drop(bench);
    assert!(!Path::new("/run/netns").join("shoalssh-b1").exists());
    assert!(failures.is_empty(), "scenarios failed on the ssh rig: {failures:?}");
}

#[test]
fn a_board_cut_with_its_power_command_comes_back_with_its_data() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    if skip_scenarios("the ssh rig power-command test") {
        return;
    }
    let bench = Bench::up("ssh-rig-power", 1);
    let bin = bench.shoal_binary();
    let rig = SshRig::new(SshRigFile::load(&bench.rig_file(&bin, true)).expect("rig file"));
    rig.down().expect("clean board");
    let cluster = shoal_hil::shoal::Cluster::form(&rig, &rig.hosts(), None).expect("one-node cluster");
    cluster.wait_converged(Duration::from_secs(60)).expect("leader");
    let put = shoal_hil::shoal::kv_put(&rig, "b1", "hil/power", "before-the-cut", Duration::from_secs(10));
    assert_eq!(put, Outcome::Ok(None));

    // the "PDU" kills everything in the board's namespace, sshd included: the board is dark
    rig.power_off("b1").unwrap();
    assert!(!rig.is_running("b1").unwrap());
    assert!(
        !rig.exec_timeout("b1", &["true"], Duration::from_secs(3)).map(|o| o.success()).unwrap_or(false),
        "a board without power does not answer ssh"
    );

    rig.restart("b1").unwrap();
    assert!(rig.is_running("b1").unwrap());
    cluster.wait_converged(Duration::from_secs(60)).expect("leader after the power cut");
    let mut got = Outcome::Unknown;
    let _ = shoal_hil::wait_until("the value read back", Duration::from_secs(30), Duration::from_millis(300), || {
        got = shoal_hil::shoal::kv_get(&rig, "b1", "hil/power", Duration::from_secs(5));
        matches!(got, Outcome::Ok(Some(_)))
    });
    if got != Outcome::Ok(Some("before-the-cut".to_string())) {
        print_logs(&rig, &bench);
    }
    assert_eq!(got, Outcome::Ok(Some("before-the-cut".to_string())));
    rig.down().expect("rig down");
}
