//! Root tests against the real kernel: busybox containers with namespaces, cgroups and shims.
//! Each test uses its own state root and cgroup parent and removes both, even on failure.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_runtime::oci_spec::runtime::{
    LinuxMemoryBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, ProcessBuilder, Spec,
};
use shoal_runtime::{default_spec, CreateOpts, Runtime, RuntimeConfig, Sandbox, ShimCommand, Signal, Status};

const SHIM: &str = env!("CARGO_BIN_EXE_shoal-runtime-shim");

fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "these tests need root (namespaces, cgroups, mounts)");
    assert!(Path::new("/bin/busybox").exists() || Path::new("/usr/bin/busybox").exists(), "install busybox-static");
}

/// A test's world: a temp dir with state root, bundles and logs; a cgroup parent of its own.
struct World {
    tmp: tempfile::TempDir,
    rt: Runtime,
    cgroup_parent: String,
    sandboxes: Vec<Sandbox>,
}

impl World {
    fn new(name: &str) -> World {
        require_root();
        let tmp = tempfile::tempdir().expect("tempdir");
        let cgroup_parent = format!("shoal-test-{}-{name}", std::process::id());
        let rt = Runtime::new(RuntimeConfig {
            root: tmp.path().join("state"),
            cgroup_parent: cgroup_parent.clone(),
            shim: ShimCommand { program: SHIM.into(), args: vec!["__shim".into()] },
            ..Default::default()
        });
        World { tmp, rt, cgroup_parent, sandboxes: Vec::new() }
    }

    /// A bundle dir with a busybox rootfs and `spec` (whose root path is replaced).
    fn bundle(&self, name: &str, mut spec: Spec) -> PathBuf {
        let bundle = self.tmp.path().join("bundles").join(name);
        let rootfs = bundle.join("rootfs");
        for d in ["bin", "proc", "dev", "sys", "tmp", "etc", "root"] {
            std::fs::create_dir_all(rootfs.join(d)).expect("mkdir");
        }
        let busybox = ["/bin/busybox", "/usr/bin/busybox"].into_iter().find(|p| Path::new(p).exists()).unwrap();
        std::fs::copy(busybox, rootfs.join("bin/busybox")).expect("copy busybox");
        let list = std::process::Command::new(busybox).arg("--list").output().expect("busybox --list");
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" && !applet.contains('/') {
                let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
            }
        }
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n")
            .unwrap();
        let mut root = spec.root().clone().unwrap_or_default();
        root.set_path(PathBuf::from("rootfs"));
        spec.set_root(Some(root));
        spec.save(bundle.join("config.json")).expect("save spec");
        bundle
    }

    fn log(&self, id: &str) -> PathBuf {
        self.tmp.path().join("logs").join(format!("{id}.log"))
    }

    fn opts(&self, id: &str) -> CreateOpts {
        CreateOpts { log_path: Some(self.log(id)), ..Default::default() }
    }

    /// Creates and starts `args` in a default container, with `edit` applied to its spec.
    fn run(&self, id: &str, args: &[&str], edit: impl FnOnce(&mut Spec)) -> shoal_runtime::State {
        let mut spec = default_spec("rootfs", args.iter().map(|s| s.to_string()).collect());
        edit(&mut spec);
        let bundle = self.bundle(id, spec);
        let st = self.rt.create(id, &bundle, &self.opts(id)).expect("create");
        assert_eq!(st.status, Status::Created);
        self.rt.start(id).expect("start");
        st
    }

    /// The messages of the container's CRI log for one stream.
    fn output(&self, id: &str, stream: &str) -> Vec<String> {
        let text = std::fs::read_to_string(self.log(id)).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut it = l.splitn(4, ' ');
                let (_ts, s, _tag, msg) = (it.next()?, it.next()?, it.next()?, it.next().unwrap_or(""));
                (s == stream).then(|| msg.to_string())
            })
            .collect()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Ok(list) = self.rt.list() {
            for st in list {
                let _ = self.rt.delete(&st.id, true);
            }
        }
        for sb in &self.sandboxes {
            let _ = sb.remove();
        }
        for entry in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let dir = entry.path().join(&self.cgroup_parent);
            if dir.exists() {
                let _ = std::fs::remove_dir(&dir);
            }
        }
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(&self.cgroup_parent));
        }
    }
}

fn resources(edit: impl FnOnce(LinuxResourcesBuilder) -> LinuxResourcesBuilder) -> impl FnOnce(&mut Spec) {
    move |spec: &mut Spec| {
        let mut linux = spec.linux().clone().unwrap_or_default();
        linux.set_resources(Some(edit(LinuxResourcesBuilder::default()).build().expect("resources")));
        spec.set_linux(Some(linux));
    }
}

#[test]
fn echo_runs_and_its_exit_code_is_reported() {
    let w = World::new("echo");
    w.run("echo", &["sh", "-c", "echo hi; echo oops >&2; exit 3"], |_| {});
    let st = w.rt.wait("echo").expect("wait");
    assert_eq!(st.status, Status::Stopped);
    assert_eq!(st.exit_code, Some(3));
    assert!(!st.oom_killed);
    assert!(st.started_at.is_some() && st.finished_at.is_some());
    assert_eq!(w.output("echo", "stdout"), vec!["hi"]);
    assert_eq!(w.output("echo", "stderr"), vec!["oops"]);
    w.rt.delete("echo", false).expect("delete");
    assert!(w.rt.list().unwrap().is_empty());
    assert!(!Path::new("/sys/fs/cgroup/memory").join(&w.cgroup_parent).join("echo").exists());
}

#[test]
fn a_terminal_container_gets_a_pty_of_its_own_devpts() {
    let w = World::new("tty");
    w.run("tty", &["sh", "-c", "test -t 0 && test -t 1 && echo has-a-tty; tty"], |spec| {
        let mut p = spec.process().clone().expect("process");
        p.set_terminal(Some(true));
        spec.set_process(Some(p));
    });
    assert_eq!(w.rt.wait("tty").expect("wait").exit_code, Some(0));
    // A terminal merges the streams; its output is logged as stdout (carriage returns and all).
    let out: Vec<String> = w.output("tty", "stdout").iter().map(|l| l.trim_end_matches('\r').to_string()).collect();
    assert!(out.iter().any(|l| l == "has-a-tty"), "{out:?}");
    // The pty is on the container's devpts, so ttyname() resolves it there.
    assert!(out.iter().any(|l| l.starts_with("/dev/pts/")), "{out:?}");
    w.rt.delete("tty", false).expect("delete");
}

#[test]
fn attach_writes_stdin_reads_live_output_and_stdin_once_closes_it() {
    let w = World::new("attach");
    let spec = default_spec(
        "rootfs",
        vec!["sh".into(), "-c".into(), "echo ready; read a; echo got-$a; cat; echo done".into()],
    );
    let bundle = w.bundle("attach", spec);
    let opts = CreateOpts { open_stdin: true, stdin_once: true, ..w.opts("attach") };
    w.rt.create("attach", &bundle, &opts).expect("create");
    let mut a = w.rt.attach("attach").expect("attach before start");
    w.rt.start("attach").expect("start");
    let mut out = String::new();
    let mut read_until = |a: &mut shoal_runtime::attach::Attach, want: &str| {
        while !out.contains(want) {
            match a.read_output().expect("read") {
                Some((_, b)) => out.push_str(&String::from_utf8_lossy(&b)),
                None => panic!("attach ended before {want:?}: {out:?}"),
            }
        }
    };
    read_until(&mut a, "ready");
    a.write_stdin(b"hello\n").expect("stdin");
    read_until(&mut a, "got-hello");
    a.write_stdin(b"through cat\n").expect("stdin");
    read_until(&mut a, "through cat");
    // The client's input ends: with stdin_once the container sees EOF and cat returns.
    a.close_stdin().expect("close");
    read_until(&mut a, "done");
    assert_eq!(w.rt.wait("attach").expect("wait").exit_code, Some(0));
    assert!(a.read_output().expect("read").is_none(), "the shim ends the session with the container");
    // The log got the same output.
    assert_eq!(w.output("attach", "stdout"), vec!["ready", "got-hello", "through cat", "done"]);
    w.rt.delete("attach", false).expect("delete");
}

#[test]
fn an_attached_client_that_does_not_read_is_disconnected_and_never_holds_the_container() {
    let w = World::new("slowattach");
    let script = "i=0; while [ $i -lt 20000 ]; do echo line-$i-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa; i=$((i+1)); done; echo end";
    let spec = default_spec("rootfs", vec!["sh".into(), "-c".into(), script.into()]);
    let bundle = w.bundle("slowattach", spec);
    w.rt.create("slowattach", &bundle, &w.opts("slowattach")).expect("create");
    let mut a = w.rt.attach("slowattach").expect("attach");
    w.rt.start("slowattach").expect("start");
    // 1.8 MB of output while the client reads none of it: the container is not held up.
    let started = Instant::now();
    assert_eq!(w.rt.wait("slowattach").expect("wait").exit_code, Some(0));
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(w.output("slowattach", "stdout").last().map(String::as_str), Some("end"));
    // The client, dropped, reads what was buffered and then the end: no hang.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut got = 0usize;
        while let Ok(Some((_, b))) = a.read_output() {
            got += b.len();
        }
        let _ = tx.send(got);
    });
    let got = rx.recv_timeout(Duration::from_secs(10)).expect("the dropped client's reads end");
    assert!(got < 1_800_000, "the client was disconnected before the end ({got} bytes)");
    w.rt.delete("slowattach", false).expect("delete");
}

#[test]
fn a_missing_program_fails_create() {
    let w = World::new("missing");
    let bundle = w.bundle("missing", default_spec("rootfs", vec!["no-such-program".into()]));
    let err = w.rt.create("missing", &bundle, &w.opts("missing")).expect_err("create must fail");
    assert!(err.to_string().contains("not found"), "{err}");
    assert!(w.rt.list().unwrap().is_empty());
}

#[test]
fn pid_namespace_hides_host_processes() {
    let w = World::new("pidns");
    w.run("pidns", &["sh", "-c", "for p in /proc/[0-9]*; do echo $p; done"], |_| {});
    assert_eq!(w.rt.wait("pidns").unwrap().exit_code, Some(0));
    assert_eq!(w.output("pidns", "stdout"), vec!["/proc/1"]);
}

#[test]
fn host_is_out_of_reach_proc_sys_read_only_mount_and_devices_refused() {
    let w = World::new("ro");
    let script = "echo x > /proc/sys/kernel/hostname && echo wrote-proc-sys; \
                  mount -t tmpfs none /tmp && echo mounted; \
                  echo 1 > /sys/kernel/profiling && echo wrote-sys; \
                  cat /proc/kcore | head -c 1 | wc -c; \
                  mknod /tmp/disk b $DISK && head -c 1 /tmp/disk && echo read-disk; \
                  ls $STATE >/dev/null 2>&1 && echo sees-daemon-state; \
                  echo done";
    // The host's first block device, e.g. 254:0.
    let disk = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with("loop"))
        .find_map(|e| std::fs::read_to_string(e.path().join("dev")).ok())
        .expect("a block device")
        .trim()
        .replace(':', " ");
    // The runtime's state root stands for the daemon's data dir and socket.
    let state = w.rt.config().root.clone();
    w.run("ro", &["sh", "-c", script], |s| {
        let mut p = s.process().clone().unwrap();
        p.set_env(Some(vec!["PATH=/bin".into(), format!("DISK={disk}"), format!("STATE={}", state.display())]));
        s.set_process(Some(p));
    });
    assert_eq!(w.rt.wait("ro").unwrap().exit_code, Some(0));
    let out = w.output("ro", "stdout");
    assert_eq!(out, vec!["0", "done"], "stderr: {:?}", w.output("ro", "stderr"));
    let err = w.output("ro", "stderr").join("\n");
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(err.contains("Operation not permitted"), "raw device must be refused: {err}");
}

#[test]
fn a_privileged_container_gets_the_host_devices_and_a_default_one_does_not() {
    let w = World::new("privdev");
    // A device of the host that no container gets by default.
    let dev = ["/dev/loop-control", "/dev/fuse", "/dev/kmsg"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("a host device such as /dev/loop-control");
    let script = "test -c $DEV && echo sees-device; (exec 3<$DEV) 2>/dev/null && echo opened-device; echo done";
    let env = |s: &mut Spec| {
        let mut p = s.process().clone().unwrap();
        p.set_env(Some(vec!["PATH=/bin".into(), format!("DEV={dev}")]));
        s.set_process(Some(p));
    };
    w.run("plain", &["sh", "-c", script], env);
    w.run("priv", &["sh", "-c", script], |s| {
        env(s);
        shoal_runtime::set_privileged_devices(s);
        let mut p = s.process().clone().unwrap();
        let mut caps = p.capabilities().clone().unwrap();
        let all: std::collections::HashSet<_> =
            shoal_runtime::current_capability_names().iter().filter_map(|c| c.parse().ok()).collect();
        caps.set_bounding(Some(all.clone()));
        caps.set_effective(Some(all.clone()));
        caps.set_permitted(Some(all));
        p.set_capabilities(Some(caps));
        s.set_process(Some(p));
    });
    assert_eq!(w.rt.wait("plain").unwrap().exit_code, Some(0));
    assert_eq!(w.rt.wait("priv").unwrap().exit_code, Some(0));
    assert_eq!(w.output("plain", "stdout"), vec!["done"], "stderr: {:?}", w.output("plain", "stderr"));
    assert_eq!(
        w.output("priv", "stdout"),
        vec!["sees-device", "opened-device", "done"],
        "stderr: {:?}",
        w.output("priv", "stderr")
    );
}

#[test]
fn memory_limit_holds_and_oom_is_reported() {
    let w = World::new("oom");
    w.run(
        "oom",
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"],
        resources(|r| r.memory(LinuxMemoryBuilder::default().limit(32i64 << 20).build().unwrap())),
    );
    let st = w.rt.wait("oom").unwrap();
    assert_eq!(st.exit_code, Some(137));
    assert!(st.oom_killed);
}

#[test]
fn fork_bomb_is_stopped_by_the_pids_limit() {
    let w = World::new("bomb");
    w.run(
        "bomb",
        &["sh", "-c", "sh -c 'while true; do sleep 60 & done'; echo survived; exec sleep 60"],
        resources(|r| r.pids(LinuxPidsBuilder::default().limit(16).build().unwrap())),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !w.output("bomb", "stdout").contains(&"survived".to_string()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(w.output("bomb", "stdout"), vec!["survived"]);
    let stats = w.rt.stats("bomb").unwrap();
    assert!(stats.pids <= 16 && stats.pids >= 8, "{stats:?}");
    assert!(w.output("bomb", "stderr").iter().any(|l| l.contains("fork")), "{:?}", w.output("bomb", "stderr"));
    let st = w.rt.stop("bomb", Duration::from_millis(100)).unwrap();
    assert_eq!(st.exit_code, Some(137));
}

#[test]
fn containers_of_a_sandbox_share_net_ipc_and_uts() {
    let mut w = World::new("sandbox");
    let sb = Sandbox::create("pod", &w.tmp.path().join("sandboxes")).expect("sandbox");
    w.sandboxes.push(sb.clone());
    let join = |hostname: Option<&str>| {
        let sb = sb.clone();
        let hostname = hostname.map(str::to_string);
        move |spec: &mut Spec| {
            let mut linux = spec.linux().clone().unwrap_or_default();
            let mut ns: Vec<_> = linux
                .namespaces()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|n| {
                    ![LinuxNamespaceType::Network, LinuxNamespaceType::Ipc, LinuxNamespaceType::Uts].contains(&n.typ())
                })
                .collect();
            ns.extend(sb.namespaces());
            linux.set_namespaces(Some(ns));
            spec.set_linux(Some(linux));
            spec.set_hostname(hostname);
        }
    };
    // The server's stdin stays open (busybox nc may end at the end of its stdin before the
    // client's data arrives).
    let mut spec =
        default_spec("rootfs", ["sh", "-c", "readlink /proc/self/ns/net; nc -l -p 9000"].map(String::from).to_vec());
    join(Some("pod-a"))(&mut spec);
    let bundle = w.bundle("server", spec);
    w.rt.create("server", &bundle, &CreateOpts { open_stdin: true, ..w.opts("server") }).expect("create");
    w.rt.start("server").expect("start");
    w.run(
        "client",
        &[
            "sh",
            "-c",
            "hostname; for i in $(seq 1 100); do echo hello | nc 127.0.0.1 9000 && exit 0; sleep 0.1; done; exit 1",
        ],
        join(None),
    );
    assert_eq!(w.rt.wait("client").unwrap().exit_code, Some(0));
    let st = w.rt.wait_timeout("server", Duration::from_secs(20)).unwrap().expect("server exits after one connection");
    assert_eq!(st.exit_code, Some(0));
    assert_eq!(w.output("client", "stdout"), vec!["pod-a"]);
    let server = w.output("server", "stdout");
    assert_eq!(server.get(1).map(String::as_str), Some("hello"));
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&sb.netns_path).unwrap());
    assert_eq!(server[0], format!("net:[{ino}]"));
    for id in ["server", "client"] {
        w.rt.delete(id, false).unwrap();
    }
    sb.remove().unwrap();
    assert!(!sb.dir.exists());
}

#[test]
fn stop_sends_term_then_kill_after_the_grace_period() {
    let w = World::new("stop");
    w.run("ignores", &["sleep", "1000"], |_| {});
    w.run("traps", &["sh", "-c", "trap 'exit 7' TERM; while true; do sleep 0.05; done"], |_| {});
    assert_eq!(w.rt.state("ignores").unwrap().status, Status::Running);
    std::thread::sleep(Duration::from_millis(200));
    let st = w.rt.stop("traps", Duration::from_secs(20)).unwrap();
    assert_eq!(st.exit_code, Some(7));
    let started = Instant::now();
    let st = w.rt.stop("ignores", Duration::from_millis(300)).unwrap();
    assert_eq!(st.exit_code, Some(137));
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[test]
fn shim_outlives_the_daemon_and_state_is_readopted() {
    let w = World::new("adopt");
    let spec =
        default_spec("rootfs", vec!["sh".into(), "-c".into(), "while true; do echo tick; sleep 0.05; done".into()]);
    let bundle = w.bundle("ticker", spec);
    let root = w.rt.config().root.clone();
    std::fs::create_dir_all(&root).unwrap();
    let mut daemon = std::process::Command::new(SHIM)
        .arg("hold")
        .arg(&root)
        .arg(&w.cgroup_parent)
        .arg("ticker")
        .arg(&bundle)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn daemon stand-in");
    let mut line = String::new();
    let mut out = daemon.stdout.take().unwrap();
    let mut b = [0u8; 1];
    while out.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
        line.push(b[0] as char);
    }
    assert!(line.starts_with("started "), "{line}");
    let pid: u32 = line["started ".len()..].parse().unwrap();
    daemon.kill().unwrap();
    daemon.wait().unwrap();

    // A fresh runtime (the restarted daemon) finds the container running with the same pid.
    let rt = Runtime::with_cgroups(w.rt.config().clone(), Arc::new(shoal_runtime::LinuxCgroups::new()));
    let list = rt.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].status, Status::Running);
    assert_eq!(list[0].pid, pid);
    let log = root.join("ticker.log");
    let before = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    std::thread::sleep(Duration::from_millis(300));
    assert!(std::fs::metadata(&log).unwrap().len() > before, "the shim keeps logging");
    rt.kill("ticker", Signal::SIGKILL).unwrap();
    let st = rt.wait("ticker").unwrap();
    assert_eq!(st.exit_code, Some(137));
}

#[test]
fn exec_runs_inside_the_container() {
    let w = World::new("exec");
    w.run("target", &["sleep", "1000"], |s| {
        s.set_hostname(Some("inside".into()));
    });
    let process = ProcessBuilder::default()
        .args(vec![
            "sh".to_string(),
            "-c".into(),
            "hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; id -u; exit 4".into(),
        ])
        .env(vec!["PATH=/bin".to_string()])
        .cwd("/")
        .build()
        .unwrap();
    let mut p = w.rt.exec("target", &process, false).expect("exec");
    let mut out = String::new();
    p.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let mut err = String::new();
    p.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(p.wait().unwrap(), 4, "stderr: {err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), vec!["inside", "sleep 1000 ", "0"]);

    let tty = ProcessBuilder::default()
        .args(vec!["sh".to_string(), "-c".into(), "test -t 0 && echo has-a-tty; tty".into()])
        .cwd("/")
        .build()
        .unwrap();
    let mut p = w.rt.exec("target", &tty, true).expect("exec tty");
    p.resize(40, 100).unwrap();
    let mut master = p.pty.take().unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        match master.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        let t = String::from_utf8_lossy(&buf);
        if t.contains("/dev/pts/") || t.contains("not a tty") {
            break;
        }
    }
    assert_eq!(p.wait().unwrap(), 0);
    let text = String::from_utf8_lossy(&buf).to_string();
    assert!(text.contains("has-a-tty"), "{text}");
    // The terminal is the container's own (its devpts), so ttyname() finds it.
    assert!(text.contains("/dev/pts/") && !text.contains("not a tty"), "{text}");
    w.rt.stop("target", Duration::from_millis(10)).unwrap();
}

#[test]
fn exec_helper_gets_its_process_spec_over_a_pipe_not_on_argv() {
    let w = World::new("execargv");
    w.run("target", &["sleep", "1000"], |_| {});
    // Waits for stdin to close, so the helper is alive while its cmdline is read; then lists
    // its own fds (the spec pipe must not leak into the process).
    let process = ProcessBuilder::default()
        .args(vec!["sh".to_string(), "-c".into(), "read x; ls /proc/self/fd; echo arg-marker-7f3a".into()])
        .env(vec!["PATH=/bin".to_string(), "DB_PASSWORD=env-marker-91c2".into()])
        .cwd("/")
        .build()
        .unwrap();
    let mut p = w.rt.exec("target", &process, false).expect("exec");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", p.pid())).expect("helper cmdline");
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains("exec"), "not the exec helper: {cmdline}");
    for secret in ["env-marker-91c2", "DB_PASSWORD", "arg-marker-7f3a", "read x"] {
        assert!(!cmdline.contains(secret), "{secret} is on the helper's argv: {cmdline}");
    }
    drop(p.stdin.take());
    let mut out = String::new();
    p.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let mut err = String::new();
    p.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(p.wait().unwrap(), 0, "stderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.last(), Some(&"arg-marker-7f3a"), "{out}");
    // 0, 1, 2 and the fd of `ls` reading /proc/self/fd; no spec pipe left open.
    assert!(lines.len() <= 5, "the process inherited more fds than stdio: {out}");
    w.rt.stop("target", Duration::from_millis(10)).unwrap();
}

#[test]
fn runtime_default_seccomp_refuses_blocked_syscalls_and_runs_a_normal_workload() {
    let w = World::new("seccomp");
    let probe = "unshare -U true && echo unshared; linux32 true && echo personality";
    // Without a profile the same container may create a user namespace: the filter is what
    // refuses it below, not the capabilities.
    w.run("open", &["sh", "-c", probe], |_| {});
    assert_eq!(w.rt.wait("open").unwrap().exit_code, Some(0));
    assert_eq!(w.output("open", "stdout"), vec!["unshared", "personality"], "{:?}", w.output("open", "stderr"));

    let workload = "unshare -U true && echo unshared; linux32 true && echo personality; \
                    echo abc | tr a-c x-z; (sleep 0.05; echo child) & wait; ls /bin/busybox; \
                    head -c 4 /dev/urandom | wc -c; echo done";
    w.run("confined", &["sh", "-c", workload], shoal_runtime::set_runtime_default);
    assert_eq!(w.rt.wait("confined").unwrap().exit_code, Some(0));
    assert_eq!(
        w.output("confined", "stdout"),
        vec!["personality", "xyz", "child", "/bin/busybox", "4", "done"],
        "{:?}",
        w.output("confined", "stderr")
    );
    let err = w.output("confined", "stderr").join("\n");
    assert!(err.contains("unshare") && err.contains("Operation not permitted"), "{err}");

    // Without no_new_privs the filter goes in before the privileges are dropped.
    w.run("privs", &["sh", "-c", "unshare -U true && echo unshared; echo done"], |s| {
        shoal_runtime::set_runtime_default(s);
        let mut p = s.process().clone().unwrap();
        p.set_no_new_privileges(Some(false));
        s.set_process(Some(p));
    });
    assert_eq!(w.rt.wait("privs").unwrap().exit_code, Some(0));
    assert_eq!(w.output("privs", "stdout"), vec!["done"], "{:?}", w.output("privs", "stderr"));

    // A process exec'd into the container is bound by the same profile.
    w.run("target", &["sleep", "1000"], shoal_runtime::set_runtime_default);
    let process = ProcessBuilder::default()
        .args(vec!["sh".to_string(), "-c".into(), "unshare -U true && echo unshared; echo in".into()])
        .env(vec!["PATH=/bin".to_string()])
        .cwd("/")
        .no_new_privileges(true)
        .build()
        .unwrap();
    let mut p = w.rt.exec("target", &process, false).expect("exec");
    let mut out = String::new();
    p.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert_eq!(p.wait().unwrap(), 0);
    assert_eq!(out.trim(), "in");
    w.rt.stop("target", Duration::from_millis(10)).unwrap();
}
