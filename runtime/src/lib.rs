//! shoal-runtime: runs OCI runtime specs as containers with namespaces, pivot_root and cgroups,
//! each supervised by a small shim process so the daemon can restart without stopping them.
//!
//! `unsafe` is confined to raw syscalls (`sys`), fd plumbing around fork/exec and ioctls; each
//! block says why it is sound.

pub mod attach;
mod caps;
mod cgroup1;
mod cgroup2;
mod cgroups;
mod error;
mod init;
mod logs;
mod rootfs;
mod runtime;
mod sandbox;
mod seccomp;
mod shim;
mod spec;
mod state;
mod sys;

pub use caps::{all_capability_names, current_capability_names, default_capabilities, default_linux_capabilities};
pub use cgroup2::{find_cgroup2_mount, Cgroup2};
pub use cgroups::{CgroupCall, CgroupDriver, FakeCgroups, LinuxCgroups, Stats};
pub use error::{Error, Result};
pub use logs::Stream;
pub use runtime::{CreateOpts, ExecProcess, Runtime, RuntimeConfig, ShimCommand};
pub use sandbox::Sandbox;
pub use seccomp::{native_arch, runtime_default_profile, set_runtime_default};
pub use shim::shim_main;
pub use spec::{default_spec, host_devices, set_privileged_devices, MASKED_PATHS, READONLY_PATHS};
pub use state::{State, Status};
pub use sys::drop_clean_file_pages;

/// Re-exported so callers build specs and signals with the same versions.
pub use nix::sys::signal::Signal;
pub use oci_spec;
