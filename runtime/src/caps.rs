//! Linux capabilities: names from the runtime spec to kernel numbers, and the default set.

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

const NAMES: &[(&str, u32)] = &[
    ("CAP_CHOWN", 0),
    ("CAP_DAC_OVERRIDE", 1),
    ("CAP_DAC_READ_SEARCH", 2),
    ("CAP_FOWNER", 3),
    ("CAP_FSETID", 4),
    ("CAP_KILL", 5),
    ("CAP_SETGID", 6),
    ("CAP_SETUID", 7),
    ("CAP_SETPCAP", 8),
    ("CAP_LINUX_IMMUTABLE", 9),
    ("CAP_NET_BIND_SERVICE", 10),
    ("CAP_NET_BROADCAST", 11),
    ("CAP_NET_ADMIN", 12),
    ("CAP_NET_RAW", 13),
    ("CAP_IPC_LOCK", 14),
    ("CAP_IPC_OWNER", 15),
    ("CAP_SYS_MODULE", 16),
    ("CAP_SYS_RAWIO", 17),
    ("CAP_SYS_CHROOT", 18),
    ("CAP_SYS_PTRACE", 19),
    ("CAP_SYS_PACCT", 20),
    ("CAP_SYS_ADMIN", 21),
    ("CAP_SYS_BOOT", 22),
    ("CAP_SYS_NICE", 23),
    ("CAP_SYS_RESOURCE", 24),
    ("CAP_SYS_TIME", 25),
    ("CAP_SYS_TTY_CONFIG", 26),
    ("CAP_MKNOD", 27),
    ("CAP_LEASE", 28),
    ("CAP_AUDIT_WRITE", 29),
    ("CAP_AUDIT_CONTROL", 30),
    ("CAP_SETFCAP", 31),
    ("CAP_MAC_OVERRIDE", 32),
    ("CAP_MAC_ADMIN", 33),
    ("CAP_SYSLOG", 34),
    ("CAP_WAKE_ALARM", 35),
    ("CAP_BLOCK_SUSPEND", 36),
    ("CAP_AUDIT_READ", 37),
    ("CAP_PERFMON", 38),
    ("CAP_BPF", 39),
    ("CAP_CHECKPOINT_RESTORE", 40),
];

/// Every capability name the runtime knows (`CAP_...`), for `privileged` and `add: [ALL]`.
pub fn all_capability_names() -> Vec<&'static str> {
    NAMES.iter().map(|(n, _)| *n).collect()
}

/// The capabilities in this process's bounding set (what a privileged container can get, as
/// containerd's "all current capabilities"); every known one when /proc cannot say.
pub fn current_capability_names() -> Vec<&'static str> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let bnd =
        status.lines().find_map(|l| l.strip_prefix("CapBnd:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
    match bnd {
        Some(mask) => NAMES.iter().filter(|(_, n)| mask & (1u64 << n) != 0).map(|(name, _)| *name).collect(),
        None => all_capability_names(),
    }
}

/// The kernel number of a capability.
pub(crate) fn number(cap: &Capability) -> Option<u32> {
    let name = serde_json::to_value(cap).ok()?;
    let name = name.as_str()?;
    NAMES.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// A capability set as a kernel bit mask.
pub(crate) fn mask(set: Option<&Capabilities>) -> u64 {
    set.map(|caps| caps.iter().filter_map(number).fold(0u64, |m, n| m | (1u64 << n))).unwrap_or(0)
}

/// The capabilities containerd gives a container that asks for nothing special.
pub fn default_capabilities() -> Capabilities {
    use Capability::*;
    [
        Chown,
        DacOverride,
        Fsetid,
        Fowner,
        Mknod,
        NetRaw,
        Setgid,
        Setuid,
        Setfcap,
        Setpcap,
        NetBindService,
        SysChroot,
        Kill,
        AuditWrite,
    ]
    .into_iter()
    .collect()
}

/// containerd's default capability sets: bounding, effective and permitted hold the default set;
/// inheritable and ambient are empty.
pub fn default_linux_capabilities() -> LinuxCapabilities {
    let set = default_capabilities();
    let mut caps = LinuxCapabilities::default();
    caps.set_bounding(Some(set.clone()));
    caps.set_effective(Some(set.clone()));
    caps.set_permitted(Some(set));
    caps.set_inheritable(Some(Capabilities::new()));
    caps.set_ambient(Some(Capabilities::new()));
    caps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_the_kernel_headers() {
        assert_eq!(number(&Capability::Chown), Some(0));
        assert_eq!(number(&Capability::SysAdmin), Some(21));
        assert_eq!(number(&Capability::CheckpointRestore), Some(40));
    }

    #[test]
    fn default_set_lacks_sys_admin() {
        let m = mask(Some(&default_capabilities()));
        assert_eq!(m & (1 << 21), 0);
        assert_ne!(m & (1 << 5), 0);
        assert_eq!(m.count_ones(), 14);
    }
}
