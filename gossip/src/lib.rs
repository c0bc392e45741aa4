//! Gossip membership with failure detection, and the mutually authenticated QUIC transport
//! between nodes. Knows nothing of Kubernetes or of the store.
#![forbid(unsafe_code)]

mod error;
pub mod membership;
pub mod pki;
pub mod revocation;
pub mod seal;
pub mod transport;

pub use error::{Error, Result};
pub use membership::{Member, Membership, MembershipConfig};
pub use pki::{ClusterSecrets, IssuedCert, JoinToken, NodeTls};
pub use revocation::Revocations;
pub use seal::{GossipKeyring, Sealer};
pub use transport::{join, JoinBundle, JoinRequest, PeerInfo, Transport, TransportConfig};
