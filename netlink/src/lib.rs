//! shoal-netlink: the node's network boundary. Links, addresses, routes and neighbours over
//! rtnetlink ([`Net`], with [`LinuxNet`] and the recording double [`FakeNet`]), nftables rulesets
//! applied atomically through `nft -f -` ([`nft`]), and the announcements that move an address
//! to this node: gratuitous ARP and unsolicited IPv6 neighbour advertisements ([`announce`]).
//!
//! `unsafe` is allowed in this crate only; every block says why it holds.

pub mod announce;
mod error;
mod fake;
mod net;
pub mod nft;

pub use error::{Error, Result};
pub use fake::{FakeNet, NetCall};
pub use net::{run_in_netns, Address, LinuxNet, Net, Route};
pub use nft::{FakeNft, LinuxNft, Nft};
