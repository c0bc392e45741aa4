use std::net::IpAddr;
use std::path::PathBuf;

/// Errors of network operations, named after the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("open rtnetlink connection")]
    Connect(#[source] std::io::Error),
    #[error("look up link {name}")]
    GetLink {
        name: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("list links")]
    ListLinks(#[source] rtnetlink::Error),
    #[error("link {0} does not exist")]
    LinkNotFound(String),
    #[error("create link {name}")]
    CreateLink {
        name: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("list routes")]
    ListRoutes(#[source] rtnetlink::Error),
    #[error("look up the route to {dst}")]
    GetRoute {
        dst: IpAddr,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("list the neighbours of {link}")]
    ListNeighbours {
        link: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("create bridge {name}")]
    CreateBridge {
        name: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("create veth pair {host}/{peer}")]
    CreateVeth {
        host: String,
        peer: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("open network namespace {path}")]
    OpenNetns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("enter network namespace {path}")]
    EnterNetns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("move link {name} into network namespace")]
    MoveLink {
        name: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("set link {name}")]
    SetLink {
        name: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("delete link {name}")]
    DeleteLink {
        name: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("add address {addr}/{prefix} on {link}")]
    AddAddress {
        link: String,
        addr: IpAddr,
        prefix: u8,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("delete address {addr} on {link}")]
    DeleteAddress {
        link: String,
        addr: IpAddr,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("list addresses of {link}")]
    ListAddresses {
        link: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("route {dst}/{prefix} is not valid: {reason}")]
    InvalidRoute { dst: IpAddr, prefix: u8, reason: String },
    #[error("replace route {dst}/{prefix}")]
    ReplaceRoute {
        dst: IpAddr,
        prefix: u8,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("delete route {dst}/{prefix}")]
    DeleteRoute {
        dst: IpAddr,
        prefix: u8,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("replace neighbour {ip} on {link}")]
    ReplaceNeighbour {
        link: String,
        ip: IpAddr,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("run nft")]
    SpawnNft(#[source] std::io::Error),
    #[error("nft rejected the ruleset: {stderr}")]
    ApplyRuleset { stderr: String },
    #[error("read hardware address of {link}")]
    ReadMac {
        link: String,
        #[source]
        source: std::io::Error,
    },
    #[error("send gratuitous ARP for {ip} on {link}")]
    SendArp {
        link: String,
        ip: IpAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("probe for other holders of {ip} on {link}")]
    ProbeArp {
        link: String,
        ip: IpAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("send neighbour advertisement for {ip} on {link}")]
    SendNeighbourAdvert {
        link: String,
        ip: IpAddr,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
