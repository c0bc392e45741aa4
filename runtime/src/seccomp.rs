//! Seccomp: the spec's `linux.seccomp` compiled into a classic BPF program that the kernel runs
//! on every syscall of the container, and containerd's RuntimeDefault profile.
//!
//! The program dispatches on the audit architecture, then finds the syscall number by binary
//! search over intervals of numbers that share one outcome; a syscall with argument rules gets
//! a small block that tries its rules in order. Each architecture section is a few hundred
//! instructions, far below the kernel's limit of 4096.
//!
//! Semantics follow runc with libseccomp: names a table does not know are skipped; the
//! conditions of one rule all have to hold, except when two of them test the same argument,
//! then each condition is a rule of its own; a syscall of an architecture the profile does not
//! list kills the process. x32 syscalls (numbers with bit 30 set under x86_64) get the default
//! action.

use std::collections::BTreeMap;
use std::io;
use std::str::FromStr;

use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder,
    LinuxSeccompFilterFlag, LinuxSeccompOperator, LinuxSyscall, Spec,
};

// Classic BPF opcodes (linux/bpf_common.h).
const LD_W_ABS: u16 = 0x20;
const ALU_AND_K: u16 = 0x54;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x15;
const JMP_JGT_K: u16 = 0x25;
const JMP_JGE_K: u16 = 0x35;
const RET_K: u16 = 0x06;

// seccomp_data offsets.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const MAX_INSNS: usize = 4096;

const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
const FLAG_TSYNC: libc::c_ulong = 1;
const FLAG_LOG: libc::c_ulong = 2;
const FLAG_SPEC_ALLOW: libc::c_ulong = 4;
const FLAG_WAIT_KILLABLE_RECV: libc::c_ulong = 32;

/// The syscall ABIs this runtime has tables for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Abi {
    X86_64,
    X86,
    Aarch64,
    Arm,
    Riscv64,
}

impl Abi {
    fn audit_arch(self) -> u32 {
        match self {
            Abi::X86_64 => 0xc000_003e,
            Abi::X86 => 0x4000_0003,
            Abi::Aarch64 => 0xc000_00b7,
            Abi::Arm => 0x4000_0028,
            Abi::Riscv64 => 0xc000_00f3,
        }
    }

    /// Whether syscall arguments are 64 bits wide.
    fn wide(self) -> bool {
        matches!(self, Abi::X86_64 | Abi::Aarch64 | Abi::Riscv64)
    }

    fn syscall_number(self, name: &str) -> Option<u32> {
        let id = match self {
            Abi::X86_64 => syscalls::x86_64::Sysno::from_str(name).ok().map(|s| s.id()),
            Abi::X86 => syscalls::x86::Sysno::from_str(name).ok().map(|s| s.id()),
            Abi::Aarch64 => syscalls::aarch64::Sysno::from_str(name).ok().map(|s| s.id()),
            Abi::Riscv64 => syscalls::riscv64::Sysno::from_str(name).ok().map(|s| s.id()),
            Abi::Arm => syscalls::arm::Sysno::from_str(name).ok().map(|s| s.id()).or(match name {
                // ARM private syscalls, __ARM_NR_BASE + n.
                "breakpoint" => Some(0x0f0001),
                "cacheflush" => Some(0x0f0002),
                "usr26" => Some(0x0f0003),
                "usr32" => Some(0x0f0004),
                "set_tls" => Some(0x0f0005),
                "get_tls" => Some(0x0f0006),
                _ => None,
            }),
        };
        id.and_then(|i| u32::try_from(i).ok())
    }

    fn from_arch(arch: Arch) -> Option<Abi> {
        match arch {
            Arch::ScmpArchX86_64 => Some(Abi::X86_64),
            Arch::ScmpArchX86 => Some(Abi::X86),
            Arch::ScmpArchAarch64 => Some(Abi::Aarch64),
            Arch::ScmpArchArm => Some(Abi::Arm),
            Arch::ScmpArchRiscv64 => Some(Abi::Riscv64),
            Arch::ScmpArchNative => native_abi(),
            _ => None,
        }
    }
}

fn native_abi() -> Option<Abi> {
    if cfg!(target_arch = "x86_64") {
        Some(Abi::X86_64)
    } else if cfg!(target_arch = "x86") {
        Some(Abi::X86)
    } else if cfg!(target_arch = "aarch64") {
        Some(Abi::Aarch64)
    } else if cfg!(target_arch = "arm") {
        Some(Abi::Arm)
    } else if cfg!(target_arch = "riscv64") {
        Some(Abi::Riscv64)
    } else {
        None
    }
}

/// The architecture this runtime was built for, as the seccomp profile names it.
pub fn native_arch() -> Arch {
    match native_abi() {
        Some(Abi::X86_64) => Arch::ScmpArchX86_64,
        Some(Abi::X86) => Arch::ScmpArchX86,
        Some(Abi::Aarch64) => Arch::ScmpArchAarch64,
        Some(Abi::Arm) => Arch::ScmpArchArm,
        Some(Abi::Riscv64) => Arch::ScmpArchRiscv64,
        None => Arch::ScmpArchNative,
    }
}

type Label = usize;

/// One instruction with symbolic jump targets.
enum Ins {
    Load(u32),
    And(u32),
    /// Conditional jump; both targets must lie within 255 instructions ahead.
    Jump {
        op: u16,
        k: u32,
        t: Label,
        f: Label,
    },
    Ja(Label),
    Ret(u32),
    Mark(Label),
}

#[derive(Default)]
struct Asm {
    ins: Vec<Ins>,
    labels: usize,
}

impl Asm {
    fn label(&mut self) -> Label {
        self.labels += 1;
        self.labels - 1
    }

    fn push(&mut self, i: Ins) {
        self.ins.push(i);
    }

    fn mark(&mut self, l: Label) {
        self.ins.push(Ins::Mark(l));
    }

    /// Jumps to `target` (any distance) when `op k` holds, falls through otherwise.
    fn jump_far_if(&mut self, op: u16, k: u32, target: Label) {
        let (tramp, next) = (self.label(), self.label());
        self.push(Ins::Jump { op, k, t: tramp, f: next });
        self.mark(tramp);
        self.push(Ins::Ja(target));
        self.mark(next);
    }

    fn assemble(self) -> io::Result<Vec<libc::sock_filter>> {
        let mut pos = vec![usize::MAX; self.labels];
        let mut pc = 0;
        for i in &self.ins {
            match i {
                Ins::Mark(l) => pos[*l] = pc,
                _ => pc += 1,
            }
        }
        if pc > MAX_INSNS {
            return Err(io::Error::other(format!(
                "seccomp program has {pc} instructions, the kernel takes {MAX_INSNS}"
            )));
        }
        let rel = |from: usize, l: Label| -> io::Result<usize> {
            let to = pos[l];
            if to == usize::MAX || to < from + 1 {
                return Err(io::Error::other("seccomp program jumps backwards"));
            }
            Ok(to - from - 1)
        };
        let short = |d: usize| -> io::Result<u8> {
            u8::try_from(d).map_err(|_| io::Error::other("seccomp rule too long for a conditional jump"))
        };
        let mut out = Vec::with_capacity(pc);
        for i in &self.ins {
            let pc = out.len();
            let f = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
            out.push(match i {
                Ins::Mark(_) => continue,
                Ins::Load(off) => f(LD_W_ABS, 0, 0, *off),
                Ins::And(k) => f(ALU_AND_K, 0, 0, *k),
                Ins::Jump { op, k, t, f: fl } => f(*op, short(rel(pc, *t)?)?, short(rel(pc, *fl)?)?, *k),
                Ins::Ja(l) => f(JMP_JA, 0, 0, rel(pc, *l)? as u32),
                Ins::Ret(k) => f(RET_K, 0, 0, *k),
            });
        }
        Ok(out)
    }
}

/// A rule of one syscall: all conditions hold, then the action.
#[derive(Clone, PartialEq)]
struct Rule {
    conditions: Vec<LinuxSeccompArg>,
    action: u32,
}

#[derive(Clone, PartialEq)]
enum Outcome {
    Ret(u32),
    Rules(Vec<Rule>),
}

fn action_value(action: LinuxSeccompAction, errno: Option<u32>) -> io::Result<u32> {
    match action {
        LinuxSeccompAction::ScmpActNotify => {
            Err(io::Error::other("seccomp action SCMP_ACT_NOTIFY needs a seccomp agent, which shoal does not run"))
        }
        LinuxSeccompAction::ScmpActErrno | LinuxSeccompAction::ScmpActTrace => {
            Ok(action.as_u32(Some(errno.unwrap_or(libc::EPERM as u32) & 0xffff)))
        }
        a => Ok(a.as_u32(None)),
    }
}

/// A compiled filter, ready to install.
pub(crate) struct Filter {
    program: Vec<libc::sock_filter>,
    flags: libc::c_ulong,
}

impl Filter {
    #[cfg(test)]
    fn len(&self) -> usize {
        self.program.len()
    }

    /// Installs the filter on the calling thread. Needs no_new_privs or CAP_SYS_ADMIN.
    pub(crate) fn install(&self) -> io::Result<()> {
        let prog = libc::sock_fprog {
            len: self.program.len() as libc::c_ushort,
            filter: self.program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: prog points at `len` valid sock_filter structs that live for the whole call;
        // the kernel copies the program and never writes through the pointer.
        let ret = unsafe {
            libc::syscall(libc::SYS_seccomp, SECCOMP_SET_MODE_FILTER, self.flags, &prog as *const libc::sock_fprog)
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Compiles a profile for this machine's architecture and those of its compat ABIs the profile
/// lists.
pub(crate) fn compile(profile: &LinuxSeccomp) -> io::Result<Filter> {
    let default = action_value(profile.default_action(), profile.default_errno_ret())?;
    let mut abis: Vec<Abi> = Vec::new();
    match profile.architectures().as_deref() {
        None | Some([]) => abis.extend(native_abi()),
        Some(list) => {
            for a in list {
                if let Some(abi) = Abi::from_arch(*a) {
                    if !abis.contains(&abi) {
                        abis.push(abi);
                    }
                }
            }
        }
    }
    if abis.is_empty() {
        return Err(io::Error::other("the seccomp profile lists no architecture shoal has syscall tables for"));
    }
    let mut flags = 0;
    for f in profile.flags().as_deref().unwrap_or(&[]) {
        flags |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => FLAG_SPEC_ALLOW,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => FLAG_WAIT_KILLABLE_RECV,
        };
    }
    let syscalls = profile.syscalls().as_deref().unwrap_or(&[]);
    let mut asm = Asm::default();
    let sections: Vec<(Abi, Label)> = abis.iter().map(|a| (*a, asm.label())).collect();
    asm.push(Ins::Load(OFF_ARCH));
    for (abi, l) in &sections {
        asm.jump_far_if(JMP_JEQ_K, abi.audit_arch(), *l);
    }
    asm.push(Ins::Ret(RET_KILL_PROCESS));
    for (abi, l) in sections {
        asm.mark(l);
        section(&mut asm, abi, syscalls, default)?;
    }
    Ok(Filter { program: asm.assemble()?, flags })
}

/// The rules of every syscall the profile names, by number, for one ABI.
fn rules_by_number(abi: Abi, syscalls: &[LinuxSyscall]) -> io::Result<BTreeMap<u32, Vec<Rule>>> {
    let mut by_nr: BTreeMap<u32, Vec<Rule>> = BTreeMap::new();
    for sc in syscalls {
        let action = action_value(sc.action(), sc.errno_ret())?;
        let args = sc.args().clone().unwrap_or_default();
        for a in &args {
            if a.index() > 5 {
                return Err(io::Error::other(format!("seccomp argument index {} out of range", a.index())));
            }
        }
        let repeated = args.iter().enumerate().any(|(i, a)| args[..i].iter().any(|b| b.index() == a.index()));
        let rules: Vec<Rule> = if repeated {
            args.iter().map(|a| Rule { conditions: vec![*a], action }).collect()
        } else {
            vec![Rule { conditions: args, action }]
        };
        for name in sc.names() {
            let Some(nr) = abi.syscall_number(name) else { continue };
            let list = by_nr.entry(nr).or_default();
            // An unconditional rule ends the list: later rules could never apply.
            if list.last().is_some_and(|r| r.conditions.is_empty()) {
                continue;
            }
            list.extend(rules.iter().cloned());
        }
    }
    Ok(by_nr)
}

fn section(asm: &mut Asm, abi: Abi, syscalls: &[LinuxSyscall], default: u32) -> io::Result<()> {
    let by_nr = rules_by_number(abi, syscalls)?;
    // Intervals [start, next start) of syscall numbers sharing one outcome.
    let mut intervals: Vec<(u32, Outcome)> = Vec::new();
    let mut push = |start: u32, o: Outcome| {
        if let (Some((_, Outcome::Ret(last))), Outcome::Ret(new)) = (intervals.last(), &o) {
            if last == new {
                return;
            }
        }
        intervals.push((start, o));
    };
    let mut cursor = 0u32;
    for (nr, rules) in by_nr {
        if nr > cursor {
            push(cursor, Outcome::Ret(default));
        }
        match rules.first() {
            Some(r) if r.conditions.is_empty() => push(nr, Outcome::Ret(r.action)),
            _ => push(nr, Outcome::Rules(rules)),
        }
        cursor = nr.saturating_add(1);
    }
    push(cursor, Outcome::Ret(default));
    asm.push(Ins::Load(OFF_NR));
    tree(asm, abi, &intervals, default)
}

fn tree(asm: &mut Asm, abi: Abi, intervals: &[(u32, Outcome)], default: u32) -> io::Result<()> {
    match intervals {
        [] => Ok(()),
        [(_, Outcome::Ret(k))] => {
            asm.push(Ins::Ret(*k));
            Ok(())
        }
        [(_, Outcome::Rules(rules))] => {
            for r in rules {
                let fail = asm.label();
                for c in &r.conditions {
                    condition(asm, abi, c, fail);
                }
                asm.push(Ins::Ret(r.action));
                asm.mark(fail);
            }
            asm.push(Ins::Ret(default));
            Ok(())
        }
        _ => {
            let mid = intervals.len() / 2;
            let right = asm.label();
            asm.jump_far_if(JMP_JGE_K, intervals[mid].0, right);
            tree(asm, abi, &intervals[..mid], default)?;
            // Only leaves load arguments, and they all return: the number is still loaded here.
            asm.mark(right);
            tree(asm, abi, &intervals[mid..], default)
        }
    }
}

/// Emits a test of one argument condition: falls through when it holds, jumps to `fail` when
/// not. Unsigned comparison of the whole 64-bit argument on 64-bit ABIs, of the low word
/// otherwise.
fn condition(asm: &mut Asm, abi: Abi, c: &LinuxSeccompArg, fail: Label) {
    let lo_off = OFF_ARGS + 8 * c.index() as u32;
    let hi_off = lo_off + 4;
    let (mut v, mut mask) = (c.value(), u64::MAX);
    if c.op() == LinuxSeccompOperator::ScmpCmpMaskedEq {
        mask = c.value();
        v = c.value_two().unwrap_or(0);
    }
    let (vlo, vhi, mlo, mhi) = (v as u32, (v >> 32) as u32, mask as u32, (mask >> 32) as u32);
    let ok = asm.label();
    use LinuxSeccompOperator::*;
    if abi.wide() {
        // Decide on the high word where it settles the comparison.
        let lo = asm.label();
        asm.push(Ins::Load(hi_off));
        match c.op() {
            ScmpCmpEq | ScmpCmpMaskedEq => {
                if mhi != u32::MAX {
                    asm.push(Ins::And(mhi));
                }
                asm.push(Ins::Jump { op: JMP_JEQ_K, k: vhi, t: lo, f: fail });
            }
            ScmpCmpNe => asm.push(Ins::Jump { op: JMP_JEQ_K, k: vhi, t: lo, f: ok }),
            ScmpCmpGt | ScmpCmpGe => {
                let eq = asm.label();
                asm.push(Ins::Jump { op: JMP_JGT_K, k: vhi, t: ok, f: eq });
                asm.mark(eq);
                asm.push(Ins::Jump { op: JMP_JEQ_K, k: vhi, t: lo, f: fail });
            }
            ScmpCmpLt | ScmpCmpLe => {
                let eq = asm.label();
                asm.push(Ins::Jump { op: JMP_JGT_K, k: vhi, t: fail, f: eq });
                asm.mark(eq);
                asm.push(Ins::Jump { op: JMP_JEQ_K, k: vhi, t: lo, f: ok });
            }
        }
        asm.mark(lo);
    }
    asm.push(Ins::Load(lo_off));
    match c.op() {
        ScmpCmpEq => asm.push(Ins::Jump { op: JMP_JEQ_K, k: vlo, t: ok, f: fail }),
        ScmpCmpMaskedEq => {
            asm.push(Ins::And(mlo));
            asm.push(Ins::Jump { op: JMP_JEQ_K, k: vlo, t: ok, f: fail });
        }
        ScmpCmpNe => asm.push(Ins::Jump { op: JMP_JEQ_K, k: vlo, t: fail, f: ok }),
        ScmpCmpGt => asm.push(Ins::Jump { op: JMP_JGT_K, k: vlo, t: ok, f: fail }),
        ScmpCmpGe => asm.push(Ins::Jump { op: JMP_JGE_K, k: vlo, t: ok, f: fail }),
        ScmpCmpLt => asm.push(Ins::Jump { op: JMP_JGE_K, k: vlo, t: fail, f: ok }),
        ScmpCmpLe => asm.push(Ins::Jump { op: JMP_JGT_K, k: vlo, t: fail, f: ok }),
    }
    asm.mark(ok);
}

/// Syscalls containerd's default profile allows to every container.
const DEFAULT_ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_time64",
    "futex_waitv",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "ptrace",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socket",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Syscalls a capability of the bounding set unlocks, as containerd's profile does.
fn unlocked_by(cap: &Capability) -> &'static [&'static str] {
    match cap {
        Capability::DacReadSearch => &["open_by_handle_at"],
        Capability::SysAdmin => &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
        Capability::SysBoot => &["reboot"],
        Capability::SysChroot => &["chroot"],
        Capability::SysModule => &["delete_module", "init_module", "finit_module"],
        Capability::SysPacct => &["acct"],
        Capability::SysPtrace => {
            &["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"]
        }
        Capability::SysRawio => &["iopl", "ioperm"],
        Capability::SysTime => &["settimeofday", "stime", "clock_settime", "clock_settime64"],
        Capability::SysTtyConfig => &["vhangup"],
        Capability::Syslog => &["syslog"],
        Capability::Bpf => &["bpf"],
        Capability::Perfmon => &["perf_event_open"],
        _ => &[],
    }
}

fn allow(names: &[&str]) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names.iter().map(|n| n.to_string()).collect());
    s.set_action(LinuxSeccompAction::ScmpActAllow);
    s
}

fn arg(index: usize, op: LinuxSeccompOperator, value: u64, value_two: Option<u64>) -> LinuxSeccompArg {
    let mut b = LinuxSeccompArgBuilder::default().index(index).op(op).value(value);
    if let Some(v) = value_two {
        b = b.value_two(v);
    }
    // Every field is set, so the builder cannot fail.
    b.build().unwrap_or_default()
}

/// containerd's RuntimeDefault profile (the one Kubernetes gives a container whose
/// `securityContext.seccompProfile.type` is `RuntimeDefault`) for a node of architecture `arch`
/// and a container whose bounding capability set is `bounding`: everything not listed fails with
/// EPERM; namespaces, mounts, keyrings, kernel modules, clock setting, reboot and the like are
/// refused unless the matching capability is granted; clone may not create namespaces and clone3
/// fails with ENOSYS (so that libc falls back to clone) without CAP_SYS_ADMIN. io_uring is not
/// allowed, as in current containerd and Docker.
pub fn runtime_default_profile(arch: Arch, bounding: &Capabilities) -> LinuxSeccomp {
    let mut syscalls = vec![allow(DEFAULT_ALLOWED)];
    // personality(2): PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and the query.
    for p in [0x0u64, 0x0008, 0x20000, 0x20008, 0xffff_ffff] {
        let mut s = allow(&["personality"]);
        s.set_args(Some(vec![arg(0, LinuxSeccompOperator::ScmpCmpEq, p, None)]));
        syscalls.push(s);
    }
    let (arches, extra): (Vec<Arch>, &[&str]) = match arch {
        Arch::ScmpArchX86_64 => {
            (vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32], &["arch_prctl", "modify_ldt"])
        }
        Arch::ScmpArchX86 => (vec![Arch::ScmpArchX86], &["modify_ldt"]),
        Arch::ScmpArchAarch64 | Arch::ScmpArchArm => (
            if arch == Arch::ScmpArchArm {
                vec![Arch::ScmpArchArm]
            } else {
                vec![Arch::ScmpArchArm, Arch::ScmpArchAarch64]
            },
            &["arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls"],
        ),
        Arch::ScmpArchRiscv64 => (vec![Arch::ScmpArchRiscv64], &["riscv_flush_icache"]),
        other => (vec![other], &[]),
    };
    syscalls.push(allow(extra));
    let mut admin = false;
    for cap in bounding.iter() {
        admin |= *cap == Capability::SysAdmin;
        let names = unlocked_by(cap);
        if !names.is_empty() {
            syscalls.push(allow(names));
        }
    }
    if !admin {
        let ns_flags = (libc::CLONE_NEWNS
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUSER
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWCGROUP) as u64;
        let mut clone = allow(&["clone"]);
        clone.set_args(Some(vec![arg(0, LinuxSeccompOperator::ScmpCmpMaskedEq, ns_flags, Some(0))]));
        syscalls.push(clone);
        let mut clone3 = allow(&["clone3"]);
        clone3.set_action(LinuxSeccompAction::ScmpActErrno);
        clone3.set_errno_ret(Some(libc::ENOSYS as u32));
        syscalls.push(clone3);
    }
    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(LinuxSeccompAction::ScmpActErrno);
    profile.set_architectures(Some(arches));
    profile.set_syscalls(Some(syscalls));
    profile
}

/// Sets `spec.linux.seccomp` to the RuntimeDefault profile for this node's architecture and the
/// spec's bounding capabilities (set the capabilities first).
pub fn set_runtime_default(spec: &mut Spec) {
    let bounding = spec
        .process()
        .as_ref()
        .and_then(|p| p.capabilities().as_ref())
        .and_then(|c| c.bounding().clone())
        .unwrap_or_default();
    let profile = runtime_default_profile(native_arch(), &bounding);
    let mut linux = spec.linux().clone().unwrap_or_default();
    linux.set_seccomp(Some(profile));
    spec.set_linux(Some(linux));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a program on a seccomp_data the way the kernel does (the subset of cBPF emitted).
    fn run(prog: &[libc::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u32; 16];
        data[0] = nr;
        data[1] = arch;
        for (i, a) in args.iter().enumerate() {
            data[4 + 2 * i] = *a as u32;
            data[5 + 2 * i] = (*a >> 32) as u32;
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = &prog[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => acc = data[i.k as usize / 4],
                ALU_AND_K => acc &= i.k,
                JMP_JA => pc += i.k as usize,
                JMP_JEQ_K | JMP_JGT_K | JMP_JGE_K => {
                    let hit = match i.code {
                        JMP_JEQ_K => acc == i.k,
                        JMP_JGT_K => acc > i.k,
                        _ => acc >= i.k,
                    };
                    pc += if hit { i.jt } else { i.jf } as usize;
                }
                RET_K => return i.k,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    const ALLOW: u32 = 0x7fff_0000;
    const EPERM: u32 = 0x0005_0001;
    const X86_64: u32 = 0xc000_003e;

    fn nr(name: &str) -> u32 {
        Abi::X86_64.syscall_number(name).unwrap()
    }

    fn default_filter(bounding: &Capabilities) -> Filter {
        compile(&runtime_default_profile(Arch::ScmpArchX86_64, bounding)).unwrap()
    }

    #[test]
    fn default_profile_allows_common_calls_and_refuses_namespaces_and_mounts() {
        let f = default_filter(&crate::caps::default_capabilities());
        assert!(f.len() < 1500, "{} instructions", f.len());
        let p = &f.program;
        for name in ["read", "write", "openat", "execve", "exit_group", "writev", "rseq", "fchmodat2"] {
            assert_eq!(run(p, X86_64, nr(name), [0; 6]), ALLOW, "{name}");
        }
        for name in ["unshare", "mount", "keyctl", "add_key", "setns", "reboot", "bpf", "io_uring_setup"] {
            assert_eq!(run(p, X86_64, nr(name), [0; 6]), EPERM, "{name}");
        }
        assert_eq!(run(p, X86_64, nr("clone3"), [0; 6]), 0x0005_0000 | libc::ENOSYS as u32);
        assert_eq!(run(p, X86_64, nr("clone"), [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(run(p, X86_64, nr("clone"), [libc::CLONE_NEWNS as u64 | 17, 0, 0, 0, 0, 0]), EPERM);
        assert_eq!(run(p, X86_64, nr("personality"), [8, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(run(p, X86_64, nr("personality"), [0x0040000, 0, 0, 0, 0, 0]), EPERM);
        assert_eq!(run(p, X86_64, nr("personality"), [1 << 32, 0, 0, 0, 0, 0]), EPERM);
        // 32-bit x86 numbering: 11 is execve there.
        assert_eq!(run(p, 0x4000_0003, 11, [0; 6]), ALLOW);
        assert_eq!(run(p, 0x4000_0003, Abi::X86.syscall_number("unshare").unwrap(), [0; 6]), EPERM);
        assert_eq!(run(p, 0xc000_00b7, 0, [0; 6]), RET_KILL_PROCESS, "unlisted architecture");
        assert_eq!(run(p, X86_64, 0x4000_0000, [0; 6]), EPERM, "x32");
        assert_eq!(run(p, X86_64, 100_000, [0; 6]), EPERM);
    }

    #[test]
    fn sys_admin_unlocks_mount_and_namespaces() {
        let mut caps = crate::caps::default_capabilities();
        caps.insert(Capability::SysAdmin);
        let f = default_filter(&caps);
        for name in ["mount", "unshare", "setns", "clone3"] {
            assert_eq!(run(&f.program, X86_64, nr(name), [0; 6]), ALLOW, "{name}");
        }
        assert_eq!(run(&f.program, X86_64, nr("clone"), [libc::CLONE_NEWNS as u64, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(run(&f.program, X86_64, nr("keyctl"), [0; 6]), EPERM);
    }

    #[test]
    fn comparisons_are_unsigned_and_64_bit() {
        use LinuxSeccompOperator::*;
        let big = 0x1_0000_0005u64;
        let cases: [(LinuxSeccompOperator, u64, Option<u64>, u64, bool); 14] = [
            (ScmpCmpEq, big, None, big, true),
            (ScmpCmpEq, big, None, 5, false),
            (ScmpCmpNe, big, None, 5, true),
            (ScmpCmpNe, big, None, big, false),
            (ScmpCmpGt, big, None, big + 1, true),
            (ScmpCmpGt, big, None, big, false),
            (ScmpCmpGt, big, None, 0x2_0000_0000, true),
            (ScmpCmpGe, big, None, big, true),
            (ScmpCmpGe, big, None, 0xffff_ffff, false),
            (ScmpCmpLt, big, None, 0xffff_ffff, true),
            (ScmpCmpLt, big, None, big, false),
            (ScmpCmpLe, big, None, big, true),
            (ScmpCmpLe, big, None, 0x2_0000_0000, false),
            (ScmpCmpMaskedEq, 0xff00_0000_00ff, Some(0x1200_0000_0034), 0x1234_5678_9a34, true),
        ];
        for (op, value, two, actual, expected) in cases {
            let mut rule = allow(&["getpid"]);
            rule.set_args(Some(vec![arg(2, op, value, two)]));
            let mut profile = LinuxSeccomp::default();
            profile.set_default_action(LinuxSeccompAction::ScmpActErrno);
            profile.set_architectures(Some(vec![Arch::ScmpArchX86_64]));
            profile.set_syscalls(Some(vec![rule]));
            let f = compile(&profile).unwrap();
            let got = run(&f.program, X86_64, nr("getpid"), [0, 0, actual, 0, 0, 0]) == ALLOW;
            assert_eq!(got, expected, "{op:?} {value:#x} vs {actual:#x}");
        }
    }

    #[test]
    fn conditions_on_one_argument_are_alternatives() {
        let mut rule = allow(&["getpid"]);
        rule.set_args(Some(vec![
            arg(0, LinuxSeccompOperator::ScmpCmpEq, 1, None),
            arg(0, LinuxSeccompOperator::ScmpCmpEq, 2, None),
        ]));
        let mut profile = LinuxSeccomp::default();
        profile.set_default_action(LinuxSeccompAction::ScmpActKillProcess);
        profile.set_architectures(Some(vec![Arch::ScmpArchX86_64]));
        profile.set_syscalls(Some(vec![rule, allow(&["no_such_syscall"])]));
        let f = compile(&profile).unwrap();
        for (a, expected) in [(1, ALLOW), (2, ALLOW), (3, RET_KILL_PROCESS)] {
            assert_eq!(run(&f.program, X86_64, nr("getpid"), [a, 0, 0, 0, 0, 0]), expected);
        }
    }

    #[test]
    fn notify_is_refused() {
        let mut rule = allow(&["getpid"]);
        rule.set_action(LinuxSeccompAction::ScmpActNotify);
        let mut profile = LinuxSeccomp::default();
        profile.set_syscalls(Some(vec![rule]));
        assert!(compile(&profile).is_err());
    }
}
