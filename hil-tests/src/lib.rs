//! shoal-hil: rigs of real hosts, fault injection, the scenario suite and its reports.
#![forbid(unsafe_code)]

pub(crate) mod abuse;
pub(crate) mod admission;
pub mod attacks;
pub mod clock;
mod error;
pub mod history;
pub mod ingress;
pub mod kube;
pub mod linearizability;
pub mod load;
pub mod netpol;
pub mod observe;
mod proc;
pub(crate) mod rbac_rig;
pub mod results;
pub mod revocation;
pub mod rig;
pub mod scenarios;
pub mod services;
pub mod shoal;
pub mod upgrade;
pub mod walkthrough;
pub mod witness;
pub mod workload;

pub use error::{Error, Result};
pub use history::{Call, History, Operation, Outcome};
pub use linearizability::{check, Verdict};
pub use proc::wait_until;
pub use rig::netns::{sweep_all, CLIENT};
pub use rig::ssh::Arch;
pub use rig::{ExecOutput, Launch, Netem, NetnsOptions, NetnsRig, Rig, RigInfo, SshHost, SshRig, SshRigFile, Topology};
pub use scenarios::{ScenarioOptions, SCENARIOS};
