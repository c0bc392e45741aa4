//! The on-prem LoadBalancer, configured with MetalLB's resources (`IPAddressPool`,
//! `L2Advertisement`, `metallb.io/v1beta1`) and annotations. The leader allocates IPs
//! ([`LbAllocator`]); every node runs an [`LbAnnouncer`], and exactly one node per IP adds it
//! and announces it, chosen deterministically from the healthy eligible nodes. A node that
//! loses sight of the quorum withdraws its IPs.
mod allocator;
mod announce;
mod pool;

use shoal_kube::{resources, Resource};

pub use allocator::LbAllocator;
pub use announce::{
    elect, Announcement, Announcer, ClusterView, FakeAnnouncer, GossipView, LbAnnouncer, LinuxAnnouncer, ATTR_LB,
    QUORUM_GRACE, REJOIN_HOLD,
};
pub use pool::DEFAULT_POOL;

/// The `spec.loadBalancerClass` shoal serves besides no class at all.
pub const LB_CLASS: &str = "shoal.io/lb";

/// Errors of the LoadBalancer.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("parse address range {0:?}")]
    ParseAddresses(String),
    #[error("read the local replica")]
    ReadReplica(#[source] Box<shoal_kube::Error>),
    #[error("write loadbalancer status of service {service}")]
    WriteStatus {
        service: String,
        #[source]
        source: Box<shoal_kube::Error>,
    },
}

impl LbError {
    pub(crate) fn read(e: shoal_kube::Error) -> LbError {
        LbError::ReadReplica(Box::new(e))
    }
}

/// A core (group "") resource by plural.
pub(crate) fn core(plural: &str) -> Resource {
    resources::lookup("", plural)
}

fn metallb(kind: &str, plural: &str) -> Resource {
    Resource {
        group: "metallb.io".into(),
        version: "v1beta1".into(),
        kind: kind.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        namespaced: true,
        short_names: vec![],
        categories: vec![],
        subresources: vec!["status".into()],
    }
}

/// MetalLB's `IPAddressPool` (served once its CRD is applied).
pub(crate) fn ipaddresspools() -> Resource {
    metallb("IPAddressPool", "ipaddresspools")
}

/// MetalLB's `L2Advertisement`.
pub(crate) fn l2advertisements() -> Resource {
    metallb("L2Advertisement", "l2advertisements")
}
