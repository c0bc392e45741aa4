//! Thin wrappers around the raw syscalls that neither std nor nix cover.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Forks with extra `CLONE_NEW*` flags: returns 0 in the child and the child's pid in the parent.
///
/// The caller must be single-threaded; the child may then use any function.
pub(crate) fn clone_process(flags: libc::c_int) -> io::Result<libc::pid_t> {
    let flags = (flags | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: without CLONE_VM and with a null stack, clone behaves like fork: the child gets a
    // copy-on-write copy of this single-threaded process, so no lock can be held by another thread.
    let ret = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    cvt(ret).map(|pid| pid as libc::pid_t)
}

/// prctl with integer arguments.
pub(crate) fn prctl(option: libc::c_int, arg2: libc::c_ulong, arg3: libc::c_ulong) -> io::Result<()> {
    // SAFETY: every option used by this crate takes plain integers, no pointers.
    let ret = unsafe { libc::prctl(option, arg2, arg3, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    cvt(ret as libc::c_long).map(drop)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// Sets this thread's effective, permitted and inheritable capability sets (bit masks).
pub(crate) fn capset(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    let mut header = CapHeader { version: CAP_VERSION_3, pid: 0 };
    let data = [
        CapData { effective: effective as u32, permitted: permitted as u32, inheritable: inheritable as u32 },
        CapData {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: (inheritable >> 32) as u32,
        },
    ];
    // SAFETY: header and data are valid repr(C) structs of the layout capset(2) expects for
    // version 3 (two data elements); the kernel only reads them.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) };
    cvt(ret).map(drop)
}

/// The highest capability number the running kernel knows.
pub(crate) fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(40)
}

/// pivot_root(2).
pub(crate) fn pivot_root(new_root: &std::ffi::CStr, put_old: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
    cvt(ret).map(drop)
}

/// Makes `fd` the controlling terminal of this session.
pub(crate) fn set_controlling_tty(fd: RawFd) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument; fd is checked by the kernel.
    let ret = unsafe { libc::ioctl(fd, libc::TIOCSCTTY as _, 0 as libc::c_int) };
    cvt(ret as libc::c_long).map(drop)
}

/// Sets a terminal's window size.
pub(crate) fn set_winsize(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize struct that lives for the duration of the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ as _, &ws as *const libc::winsize) };
    cvt(ret as libc::c_long).map(drop)
}

/// Dups `fd` onto `target` (clearing close-on-exec there).
pub(crate) fn dup_onto(fd: RawFd, target: RawFd) -> io::Result<()> {
    if fd == target {
        // SAFETY: F_GETFD/F_SETFD on an fd number only changes its flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        cvt(flags as libc::c_long)?;
        // SAFETY: as above.
        let ret = unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) };
        return cvt(ret as libc::c_long).map(drop);
    }
    // SAFETY: dup2 only manipulates the fd table; target is closed first if open.
    let ret = unsafe { libc::dup2(fd, target) };
    cvt(ret as libc::c_long).map(drop)
}

/// Leaves the process immediately without running destructors or atexit handlers (for forked
/// children that must not flush state they share with their parent).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no memory of this process.
    unsafe { libc::_exit(code) }
}

/// Resets every signal's disposition to default and unblocks all signals.
pub(crate) fn reset_signals() {
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL is always a valid disposition; errors for invalid numbers are ignored.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    let empty = nix::sys::signal::SigSet::empty();
    let _ = nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(&empty), None);
}

/// Ignores a signal.
pub(crate) fn ignore_signal(sig: libc::c_int) {
    // SAFETY: SIG_IGN is a valid disposition for every catchable signal.
    unsafe {
        libc::signal(sig, libc::SIG_IGN);
    }
}

/// Marks every fd from `from` up close-on-exec, so the next program inherits only its stdio
/// (whatever the process that started us leaked).
pub(crate) fn cloexec_from(from: RawFd) {
    let fds: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => {
            dir.filter_map(|e| e.ok()).filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok())).collect()
        }
        Err(_) => return,
    };
    for fd in fds.into_iter().filter(|fd| *fd >= from) {
        // SAFETY: F_GETFD/F_SETFD only change an fd's flags; a stale number fails with EBADF.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// Opens a pseudo-terminal on the devpts this process sees at /dev/ptmx (inside a container,
/// the container's own, so `ttyname()` names a /dev/pts entry it can see, as under runc),
/// sends the master end over the unix socket `sock` (SCM_RIGHTS) and installs the slave end as
/// fds 0 to 2. The caller then makes fd 0 its controlling terminal.
pub(crate) fn hand_over_terminal(sock: RawFd) -> io::Result<()> {
    use nix::fcntl::OFlag;
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    let err = |what: &str, e: nix::Error| io::Error::other(format!("{what}: {}", io::Error::from(e)));
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| err("open /dev/ptmx", e))?;
    nix::pty::grantpt(&master).map_err(|e| err("grantpt", e))?;
    nix::pty::unlockpt(&master).map_err(|e| err("unlockpt", e))?;
    let name = nix::pty::ptsname_r(&master).map_err(|e| err("ptsname", e))?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| err(&format!("open {name}"), e))?;
    let fds = [master.as_raw_fd()];
    sendmsg::<UnixAddr>(sock, &[io::IoSlice::new(b"t")], &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)
        .map_err(|e| err("send the terminal", e))?;
    drop(master);
    for target in 0..3 {
        dup_onto(slave.as_raw_fd(), target)?;
    }
    Ok(())
}

/// Receives one file descriptor sent with SCM_RIGHTS on `sock`, within `timeout`; `who` names
/// the sender in the error when it went away first.
pub(crate) fn receive_fd(
    sock: &std::os::unix::net::UnixStream,
    timeout: std::time::Duration,
    who: &str,
) -> io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    use std::os::fd::{FromRawFd, OwnedFd};
    sock.set_read_timeout(Some(timeout))?;
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<UnixAddr>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            let mut owned: Vec<OwnedFd> = fds
                .into_iter()
                // SAFETY: SCM_RIGHTS just installed these descriptors in this process; nothing
                // else owns them.
                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
                .collect();
            if let Some(fd) = owned.pop() {
                return Ok(fd);
            }
        }
    }
    Err(io::Error::other(format!("{who} ended before it sent the terminal")))
}

/// pidfd_open(2): a descriptor that polls readable once process `pid` has exited (Linux 5.3;
/// the process need not be a child).
pub(crate) fn pidfd_open(pid: u32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor that nothing else owns.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0 as libc::c_uint) };
    // SAFETY: on success `ret` is a fresh descriptor owned by no one else.
    cvt(ret).map(|fd| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Drops this process's page-table entries for every read-only private file mapping none of
/// whose pages were ever written (program text, read-only data), so its resident size is what
/// it touches from now on. The pages stay in the page cache: a later access maps them again
/// with a minor fault, with the same contents. Mappings with anonymous (copy-on-write) pages,
/// such as relocated RELRO data, are left alone.
pub fn drop_clean_file_pages() {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else { return };
    let mut current: Option<(usize, usize)> = None;
    let mut zap = Vec::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-').filter(|(s, _)| s.bytes().all(|b| b.is_ascii_hexdigit())) {
            // `START-END PERMS OFFSET DEV INODE PATH`: a private, read-only mapping of a file.
            let perms = fields.next().unwrap_or("");
            let inode = fields.nth(2).unwrap_or("0");
            let path = fields.next().unwrap_or("");
            current = match (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) {
                (Ok(s), Ok(e))
                    if perms.starts_with('r')
                        && &perms[1..2] == "-"
                        && perms.ends_with('p')
                        && inode != "0"
                        && path.starts_with('/') =>
                {
                    Some((s, e))
                }
                _ => None,
            };
        } else if first == "Anonymous:" {
            if let (Some(range), Some("0")) = (current.take(), fields.next()) {
                zap.push(range);
            }
        }
    }
    for (start, end) in zap {
        // SAFETY: the range is a whole private read-only file mapping without anonymous pages:
        // MADV_DONTNEED only unmaps its pages, which fault back in unchanged from the file.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

/// The largest process spec the exec helper reads from its spec fd.
const MAX_INHERITED_READ: u64 = 4 << 20;

/// Reads an fd this process inherited at a fixed number (e.g. the exec helper's spec pipe) to
/// end of file, and closes it, so that nothing it starts inherits it.
pub(crate) fn read_inherited_fd(fd: RawFd) -> io::Result<String> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_GETFD only reads the flags of an fd number; it fails when nothing is open there.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    cvt(flags as libc::c_long)?;
    // SAFETY: the fd was handed to this process at exec; nothing else in it owns that number.
    let file = std::fs::File::from(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
    let mut text = String::new();
    io::Read::read_to_string(&mut io::Read::take(file, MAX_INHERITED_READ + 1), &mut text)?;
    if text.len() as u64 > MAX_INHERITED_READ {
        return Err(io::Error::other(format!("more than {MAX_INHERITED_READ} bytes")));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_kb(key: &str) -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    #[test]
    fn dropping_clean_file_pages_shrinks_rss_and_keeps_the_program_working() {
        let before = status_kb("RssFile:");
        drop_clean_file_pages();
        let after = status_kb("RssFile:");
        assert!(after < before, "RssFile {before} kB -> {after} kB");
        // Relocated data (vtables behind trait objects, formatting) must still be intact.
        let shown: Vec<Box<dyn std::fmt::Display>> = vec![Box::new(42u32), Box::new("text"), Box::new(1.5f64)];
        let text: Vec<String> = shown.iter().map(|d| format!("{d}")).collect();
        assert_eq!(text, ["42", "text", "1.5"]);
        assert!(pidfd_open(std::process::id()).is_ok());
    }
}
