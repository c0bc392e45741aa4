//! The core of cgroup v2: creating cgroups with controllers enabled, placing processes,
//! freezing, killing, the populated and frozen events, and the device filter, which on v2 is an
//! eBPF program (BPF_PROG_TYPE_CGROUP_DEVICE) attached to the cgroup rather than a controller.
//! What the controllers' files are set to is `cgroups::v2_settings`.
//!
//! The hierarchy's mount point is a parameter: /sys/fs/cgroup on a pure v2 system, or the
//! `cgroup2` mount of a hybrid layout (often /sys/fs/cgroup/unified).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use crate::error::{Error, Result};

fn err(path: &Path, operation: &'static str, e: io::Error) -> Error {
    Error::Cgroup { path: path.display().to_string(), operation, source: Box::new(e) }
}

/// Writes a cgroupfs file, which must exist (v1 or v2). No O_CREAT: cgroupfs answers it with
/// EACCES for a file it lacks, which hides the ENOENT that says so.
pub(crate) fn write_file(file: &Path, value: &str, operation: &'static str) -> Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(file)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| err(file, operation, e))
}

/// The mount point of the cgroup v2 hierarchy in a `/proc/mounts` text, if there is one.
pub fn find_cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        let (_src, target, fstype) = (it.next()?, it.next()?, it.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(target.replace("\\040", " ")))
    })
}

/// One cgroup v2 hierarchy.
#[derive(Clone, Debug)]
pub struct Cgroup2 {
    root: PathBuf,
}

impl Cgroup2 {
    /// The hierarchy mounted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Cgroup2 {
        Cgroup2 { root: root.into() }
    }

    /// The hierarchy this machine mounts (from /proc/mounts), if any.
    pub fn detect() -> Option<Cgroup2> {
        let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
        find_cgroup2_mount(&mounts).map(Cgroup2::new)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of cgroup `path` (relative to the root, `shoal/web-1`).
    pub fn dir(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    fn write(&self, path: &str, file: &str, value: &str, operation: &'static str) -> Result<()> {
        write_file(&self.dir(path).join(file), value, operation)
    }

    /// Writes a controller's interface file of the cgroup (`memory.max`, `cpu.weight`).
    pub(crate) fn set(&self, path: &str, file: &str, value: &str) -> Result<()> {
        self.write(path, file, value, "apply resources")
    }

    fn read(&self, path: &str, file: &str) -> Result<String> {
        let p = self.dir(path).join(file);
        std::fs::read_to_string(&p).map_err(|e| err(&p, "read", e))
    }

    /// Creates the cgroup and its parents.
    pub fn create(&self, path: &str) -> Result<()> {
        let d = self.dir(path);
        std::fs::create_dir_all(&d).map_err(|e| err(&d, "create", e))
    }

    /// Creates the cgroup and its parents, each with `controllers` enabled in its parent's
    /// `cgroup.subtree_control` (those the parent offers; a limit on one it lacks then fails
    /// on its missing file), so the cgroup gets their interface files.
    pub fn create_with_controllers(&self, path: &str, controllers: &[&str]) -> Result<()> {
        let mut dir = self.root.clone();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            enable_controllers(&dir, controllers)?;
            dir.push(part);
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(err(&dir, "create", e)),
            }
        }
        Ok(())
    }

    /// Moves a process (all its threads) into the cgroup.
    pub fn add_process(&self, path: &str, pid: u32) -> Result<()> {
        self.write(path, "cgroup.procs", &pid.to_string(), "add process")
    }

    /// The processes in the cgroup (not its children); none when it does not exist.
    pub fn processes(&self, path: &str) -> Result<Vec<u32>> {
        if !self.dir(path).exists() {
            return Ok(Vec::new());
        }
        Ok(self.read(path, "cgroup.procs")?.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    fn event(&self, path: &str, key: &str) -> Result<bool> {
        let text = self.read(path, "cgroup.events")?;
        Ok(text.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == [key, "1"]))
    }

    /// Whether a process lives in the cgroup or below it.
    pub fn populated(&self, path: &str) -> Result<bool> {
        self.event(path, "populated")
    }

    /// Whether every process of the cgroup is frozen.
    pub fn frozen(&self, path: &str) -> Result<bool> {
        self.event(path, "frozen")
    }

    /// Freezes (or thaws) every process of the cgroup and its children, and waits up to
    /// `timeout` for the kernel to report it done.
    pub fn set_frozen(&self, path: &str, frozen: bool, timeout: Duration) -> Result<()> {
        self.write(path, "cgroup.freeze", if frozen { "1" } else { "0" }, "freeze")?;
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(100);
        while self.frozen(path)? != frozen {
            if Instant::now() >= deadline {
                let p = self.dir(path).join("cgroup.events");
                return Err(err(&p, "freeze", io::Error::new(io::ErrorKind::TimedOut, "the kernel did not settle")));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
        Ok(())
    }

    /// SIGKILLs every process of the cgroup and its children at once (cgroup.kill, Linux 5.14).
    pub fn kill(&self, path: &str) -> Result<()> {
        self.write(path, "cgroup.kill", "1", "kill")
    }

    /// Removes the cgroup, which must be empty; a missing one is fine.
    pub fn remove(&self, path: &str) -> Result<()> {
        let d = self.dir(path);
        match std::fs::remove_dir(&d) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err(&d, "remove", e)),
        }
    }

    /// Replaces the cgroup's device filter by one built from `rules` (the later rule wins, a
    /// device no rule matches is denied). Programs this cgroup held before are detached once the
    /// new one is in place, so no device is let through in between.
    pub fn set_device_rules(&self, path: &str, rules: &[LinuxDeviceCgroup]) -> Result<()> {
        let d = self.dir(path);
        let insns = device_program(rules);
        let cg = nix::fcntl::open(
            &d,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| err(&d, "open", io::Error::from(e)))?;
        let old = bpf::query_device_programs(cg.as_raw_fd()).map_err(|e| err(&d, "query device programs", e))?;
        let prog = bpf::load_device_program(&insns).map_err(|e| err(&d, "load device program", e))?;
        bpf::attach_device_program(cg.as_raw_fd(), prog.as_raw_fd())
            .map_err(|e| err(&d, "attach device program", e))?;
        for id in old {
            // A program detached meanwhile by someone else is already gone.
            if let Ok(fd) = bpf::program_by_id(id) {
                bpf::detach_device_program(cg.as_raw_fd(), fd.as_raw_fd())
                    .map_err(|e| err(&d, "detach device program", e))?;
            }
        }
        Ok(())
    }
}

/// Enables for the children of `dir` those of `controllers` it offers and has not enabled yet.
fn enable_controllers(dir: &Path, controllers: &[&str]) -> Result<()> {
    let read = |file: &str| {
        let p = dir.join(file);
        std::fs::read_to_string(&p).map_err(|e| err(&p, "read", e))
    };
    let offered = read("cgroup.controllers")?;
    let enabled = read("cgroup.subtree_control")?;
    let has = |list: &str, c: &str| list.split_whitespace().any(|x| x == c);
    let missing: Vec<String> =
        controllers.iter().filter(|c| has(&offered, c) && !has(&enabled, c)).map(|c| format!("+{c}")).collect();
    if missing.is_empty() {
        return Ok(());
    }
    write_file(&dir.join("cgroup.subtree_control"), &missing.join(" "), "enable controllers")
}

// eBPF opcodes (linux/bpf.h).
const LDX_MEM_W: u8 = 0x61;
const ALU64_AND_K: u8 = 0x57;
const ALU64_RSH_K: u8 = 0x77;
const ALU64_MOV_K: u8 = 0xb7;
const ALU64_MOV_X: u8 = 0xbf;
const JMP_JNE_K: u8 = 0x55;
const JMP_JNE_X: u8 = 0x5d;
const JMP_EXIT: u8 = 0x95;

const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

/// One eBPF instruction as the kernel takes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BpfInsn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> BpfInsn {
    BpfInsn { code, regs: (src << 4) | (dst & 0x0f), off, imm }
}

fn access_mask(access: Option<&str>) -> i32 {
    let a = access.unwrap_or("rwm");
    let mut m = 0;
    for c in a.chars() {
        m |= match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => 0,
        };
    }
    m
}

/// The device filter program. With `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major;
/// u32 minor; }` in r1: r2 = device type, r3 = requested access, r4 = major, r5 = minor. Rules
/// are tried from the last to the first; the first that matches decides.
pub(crate) fn device_program(rules: &[LinuxDeviceCgroup]) -> Vec<BpfInsn> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU64_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU64_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for r in rules.iter().rev() {
        let mut block = Vec::new();
        // Each test jumps to the end of the block when it fails; offsets are filled in below.
        let typ = match r.typ() {
            Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => Some(DEV_CHAR),
            Some(LinuxDeviceType::B) => Some(DEV_BLOCK),
            // A pipe or fifo never reaches the device filter.
            Some(LinuxDeviceType::P) => continue,
            Some(LinuxDeviceType::A) | None => None,
        };
        if let Some(t) = typ {
            block.push(insn(JMP_JNE_K, 2, 0, 0, t));
        }
        let mask = access_mask(r.access().as_deref());
        if mask != ACC_READ | ACC_WRITE | ACC_MKNOD {
            // Every requested access must be among the rule's.
            block.push(insn(ALU64_MOV_X, 6, 3, 0, 0));
            block.push(insn(ALU64_AND_K, 6, 0, 0, mask));
            block.push(insn(JMP_JNE_X, 6, 3, 0, 0));
        }
        if let Some(major) = r.major().filter(|m| *m >= 0) {
            block.push(insn(JMP_JNE_K, 4, 0, 0, major as i32));
        }
        if let Some(minor) = r.minor().filter(|m| *m >= 0) {
            block.push(insn(JMP_JNE_K, 5, 0, 0, minor as i32));
        }
        let unconditional = block.is_empty();
        block.push(insn(ALU64_MOV_K, 0, 0, 0, i32::from(r.allow())));
        block.push(insn(JMP_EXIT, 0, 0, 0, 0));
        if unconditional {
            // It matches every device: the kernel refuses code after it as unreachable.
            p.extend(block);
            return p;
        }
        let len = block.len();
        for (i, b) in block.iter_mut().enumerate() {
            if b.code == JMP_JNE_K || b.code == JMP_JNE_X {
                b.off = (len - i - 1) as i16;
            }
        }
        p.extend(block);
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    p
}

/// The bpf(2) calls the device filter needs.
mod bpf {
    use super::*;

    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_ATTACH: libc::c_long = 8;
    const BPF_PROG_DETACH: libc::c_long = 9;
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    const BPF_PROG_QUERY: libc::c_long = 16;
    const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
    const BPF_CGROUP_DEVICE: u32 = 6;
    const BPF_F_ALLOW_MULTI: u32 = 2;

    /// `union bpf_attr`, as the byte array the kernel reads (zeroed beyond the fields set).
    #[repr(C, align(8))]
    struct Attr([u8; 128]);

    impl Attr {
        fn new() -> Attr {
            Attr([0; 128])
        }
        fn u32_at(&mut self, off: usize, v: u32) -> &mut Attr {
            self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
            self
        }
        fn u64_at(&mut self, off: usize, v: u64) -> &mut Attr {
            self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
            self
        }
        fn read_u32(&self, off: usize) -> u32 {
            let mut b = [0u8; 4];
            b.copy_from_slice(&self.0[off..off + 4]);
            u32::from_ne_bytes(b)
        }
    }

    fn call(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
        // SAFETY: attr is a 128-byte, 8-aligned buffer valid for the whole call; every pointer
        // stored in it points at memory the caller keeps alive across this call; the kernel
        // reads at most `size` bytes and writes only into the buffer and those pointers.
        let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut Attr, std::mem::size_of::<Attr>()) };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }

    fn owned(fd: libc::c_long) -> OwnedFd {
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
    }

    pub(super) fn load_device_program(insns: &[BpfInsn]) -> io::Result<OwnedFd> {
        let license = CString::new("Apache-2.0").map_err(io::Error::other)?;
        let mut attr = Attr::new();
        attr.u32_at(0, BPF_PROG_TYPE_CGROUP_DEVICE)
            .u32_at(4, insns.len() as u32)
            .u64_at(8, insns.as_ptr() as u64)
            .u64_at(16, license.as_ptr() as u64)
            .u32_at(68, BPF_CGROUP_DEVICE);
        if let Ok(fd) = call(BPF_PROG_LOAD, &mut attr) {
            return Ok(owned(fd));
        }
        // Once more with the verifier's log, to say why.
        let mut log = vec![0u8; 64 * 1024];
        attr.u32_at(24, 1).u32_at(28, log.len() as u32).u64_at(32, log.as_mut_ptr() as u64);
        match call(BPF_PROG_LOAD, &mut attr) {
            Ok(fd) => Ok(owned(fd)),
            Err(e) => {
                let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                let verifier = String::from_utf8_lossy(&log[..end]).trim().replace('\n', "; ");
                Err(io::Error::new(e.kind(), format!("{e}: {verifier}")))
            }
        }
    }

    pub(super) fn attach_device_program(cgroup: RawFd, prog: RawFd) -> io::Result<()> {
        let mut attr = Attr::new();
        attr.u32_at(0, cgroup as u32).u32_at(4, prog as u32).u32_at(8, BPF_CGROUP_DEVICE).u32_at(12, BPF_F_ALLOW_MULTI);
        call(BPF_PROG_ATTACH, &mut attr).map(drop)
    }

    pub(super) fn detach_device_program(cgroup: RawFd, prog: RawFd) -> io::Result<()> {
        let mut attr = Attr::new();
        attr.u32_at(0, cgroup as u32).u32_at(4, prog as u32).u32_at(8, BPF_CGROUP_DEVICE);
        call(BPF_PROG_DETACH, &mut attr).map(drop)
    }

    /// Ids of the device programs attached to this cgroup itself.
    pub(super) fn query_device_programs(cgroup: RawFd) -> io::Result<Vec<u32>> {
        let mut ids = vec![0u32; 64];
        let mut attr = Attr::new();
        attr.u32_at(0, cgroup as u32)
            .u32_at(4, BPF_CGROUP_DEVICE)
            .u64_at(16, ids.as_mut_ptr() as u64)
            .u32_at(24, ids.len() as u32);
        call(BPF_PROG_QUERY, &mut attr)?;
        let n = (attr.read_u32(24) as usize).min(ids.len());
        ids.truncate(n);
        Ok(ids)
    }

    pub(super) fn program_by_id(id: u32) -> io::Result<OwnedFd> {
        let mut attr = Attr::new();
        attr.u32_at(0, id);
        call(BPF_PROG_GET_FD_BY_ID, &mut attr).map(owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    #[test]
    fn finds_the_cgroup2_mount() {
        let mounts = "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
        assert_eq!(find_cgroup2_mount(mounts), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(find_cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn device_program_tries_the_last_rule_first_and_denies_by_default() {
        let rule = |allow: bool, typ, major: i64, minor: i64, access: &str| {
            LinuxDeviceCgroupBuilder::default()
                .allow(allow)
                .typ(typ)
                .major(major)
                .minor(minor)
                .access(access)
                .build()
                .unwrap()
        };
        let p = device_program(&[
            rule(false, LinuxDeviceType::A, -1, -1, "rwm"),
            rule(true, LinuxDeviceType::C, 1, 5, "r"),
        ]);
        // Prologue (6), the allow rule: type, access (3), major, minor, mov, exit (8), the deny
        // rule that matches everything: mov, exit (2), and nothing after it.
        assert_eq!(p.len(), 16);
        assert_eq!(p[6], insn(JMP_JNE_K, 2, 0, 7, DEV_CHAR));
        assert_eq!(p[8], insn(ALU64_AND_K, 6, 0, 0, ACC_READ));
        assert_eq!(p[12], insn(ALU64_MOV_K, 0, 0, 0, 1));
        assert_eq!(p[13], insn(JMP_EXIT, 0, 0, 0, 0));
        assert_eq!(p[14], insn(ALU64_MOV_K, 0, 0, 0, 0));
        let open = device_program(&[rule(true, LinuxDeviceType::C, 1, 5, "rwm")]);
        assert_eq!(open.len(), 6 + 5 + 2, "type, major, minor, mov, exit, then the default deny");
    }
}
