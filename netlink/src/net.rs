//! Links, addresses, routes and neighbours.
use std::future::Future;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};

use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState};
use rtnetlink::packet_route::route::{RouteAttribute, RouteFlags};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};

use crate::{Error, Result};

/// An address on a link, with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    pub addr: IpAddr,
    pub prefix: u8,
}

/// A route: `dst/prefix` via a gateway and/or out of a link.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    pub dst: IpAddr,
    pub prefix: u8,
    pub via: Option<IpAddr>,
    pub dev: Option<String>,
}

/// The network operations a node needs. [`LinuxNet`] talks rtnetlink; [`crate::FakeNet`]
/// records the calls for tests.
pub trait Net: Send + Sync {
    /// Creates the bridge if missing and sets it up; returns its index.
    fn ensure_bridge(&self, name: &str) -> impl Future<Output = Result<u32>> + Send;
    /// Creates a veth pair, moves `peer` into the network namespace at `netns`, attaches
    /// `host` to `bridge` (when given) and sets it up.
    fn create_veth(
        &self,
        host: &str,
        peer: &str,
        netns: &Path,
        bridge: Option<&str>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The names of every link of the namespace.
    fn list_links(&self) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// Deletes a link (deleting one end of a veth pair deletes both).
    fn delete_link(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
    /// Sets a link up or down.
    fn set_link_up(&self, name: &str, up: bool) -> impl Future<Output = Result<()>> + Send;
    /// Adds an address. IPv6 addresses skip duplicate address detection, so a moved VIP is
    /// usable at once. An address already present is not an error.
    fn add_address(&self, link: &str, addr: Address) -> impl Future<Output = Result<()>> + Send;
    /// Removes an address; one that is absent is not an error.
    fn del_address(&self, link: &str, addr: IpAddr) -> impl Future<Output = Result<()>> + Send;
    /// The addresses of a link.
    fn list_addresses(&self, link: &str) -> impl Future<Output = Result<Vec<Address>>> + Send;
    /// Adds or replaces a route.
    fn replace_route(&self, route: &Route) -> impl Future<Output = Result<()>> + Send;
    /// Deletes a route; one that is absent is not an error.
    fn del_route(&self, route: &Route) -> impl Future<Output = Result<()>> + Send;
    /// Adds or replaces a permanent neighbour entry.
    fn replace_neighbour(&self, link: &str, ip: IpAddr, mac: [u8; 6]) -> impl Future<Output = Result<()>> + Send;
}

/// [`Net`] over an rtnetlink socket of the network namespace it was created in.
#[derive(Clone)]
pub struct LinuxNet {
    handle: Handle,
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

impl LinuxNet {
    /// Opens a connection in the current network namespace; needs a tokio runtime.
    pub fn new() -> Result<LinuxNet> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(Error::Connect)?;
        tokio::spawn(conn);
        Ok(LinuxNet { handle })
    }

    /// Opens a connection in the network namespace at `netns` (a pod's, say): the socket is
    /// made on a thread that enters the namespace and stays bound to it, wherever it is used
    /// from. Needs a tokio runtime.
    pub fn in_netns(netns: &Path) -> Result<LinuxNet> {
        // The socket registers with the caller's runtime as it is made.
        let rt = tokio::runtime::Handle::current();
        let (conn, handle, _) = run_in_netns(netns, || {
            let _rt = rt.enter();
            rtnetlink::new_connection()
        })?
        .map_err(Error::Connect)?;
        tokio::spawn(conn);
        Ok(LinuxNet { handle })
    }

    /// Connects the network namespace at `netns` to this one: a veth pair whose end `host`
    /// stays here (attached to `bridge`, hairpin on, up) and whose other end is created in
    /// `netns`, named `inside` there (so `inside` may be a name taken here, such as `eth0`).
    /// Both ends get `mtu`. The far end is made in its namespace by the one request that makes
    /// the pair: moving a link between namespaces afterwards costs the kernel a network-wide
    /// synchronisation under the rtnl lock (tens of milliseconds, serialising pod starts).
    pub async fn attach_veth(&self, host: &str, inside: &str, netns: &Path, bridge: &str, mtu: u32) -> Result<()> {
        let bridge_index = self.must_index(bridge).await?;
        self.add_veth_into(host, inside, netns, Some(bridge_index), Some(mtu)).await?;
        let host_index = self.must_index(host).await?;
        // Hairpin: a pod reaching its own Service is sent back out of its own port. Bridge
        // port options go in RTM_NEWLINK, as `ip link set H type bridge_slave hairpin on`.
        self.handle
            .link()
            .set_port(LinkBridgePort::new(host_index).hairpin(true).build())
            .execute()
            .await
            .map_err(|source| Error::SetLink { name: host.into(), source })
    }

    /// Makes a veth pair whose end `host` stays here, up (on the bridge with index `bridge`, if
    /// given), and whose end `inside` is created in the namespace at `netns`, in one request
    /// (never moved there afterwards, see [`LinuxNet::attach_veth`]).
    async fn add_veth_into(
        &self,
        host: &str,
        inside: &str,
        netns: &Path,
        bridge: Option<u32>,
        mtu: Option<u32>,
    ) -> Result<()> {
        use rtnetlink::packet_route::link::{InfoData, InfoVeth};
        let ns = std::fs::File::open(netns).map_err(|source| Error::OpenNetns { path: netns.into(), source })?;
        let mut peer = LinkUnspec::new_with_name(inside).setns_by_fd(ns.as_raw_fd());
        let mut pair = LinkVeth::new(host, inside).up();
        if let Some(m) = mtu {
            peer = peer.mtu(m);
            pair = pair.mtu(m);
        }
        if let Some(b) = bridge {
            pair = pair.controller(b);
        }
        let pair = pair.set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build()))).build();
        self.handle.link().add(pair).execute().await.map_err(|source| Error::CreateVeth {
            host: host.into(),
            peer: inside.into(),
            source,
        })
    }

    /// The gateway the kernel routes `dst` through: `None` when `dst` is on-link (as
    /// `ip route get DST` without `via`).
    pub async fn gateway_to(&self, dst: IpAddr) -> Result<Option<IpAddr>> {
        let prefix = if dst.is_ipv4() { 32 } else { 128 };
        let invalid = |reason: String| Error::InvalidRoute { dst, prefix, reason };
        let msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst, prefix)
            .map_err(|e| invalid(e.to_string()))?
            .build();
        let mut replies = self.handle.route().get(msg).execute();
        let first = replies.try_next().await.map_err(|source| Error::GetRoute { dst, source })?;
        let route = first.ok_or_else(|| invalid("no route".into()))?;
        Ok(route.attributes.iter().find_map(|a| match a {
            RouteAttribute::Gateway(g) => route_ip(g),
            _ => None,
        }))
    }

    /// The IPv4 routes of the main table (`ip -4 route show table main`): destination, prefix
    /// and gateway; `dev` is left empty.
    pub async fn ipv4_routes(&self) -> Result<Vec<Route>> {
        use rtnetlink::packet_route::route::RouteHeader;
        let msg = RouteMessageBuilder::<std::net::Ipv4Addr>::new().build();
        let msgs: Vec<rtnetlink::packet_route::route::RouteMessage> =
            self.handle.route().get(msg).execute().try_collect().await.map_err(Error::ListRoutes)?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.table == RouteHeader::RT_TABLE_MAIN)
            .map(|m| {
                let mut r = Route {
                    dst: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                    prefix: m.header.destination_prefix_length,
                    via: None,
                    dev: None,
                };
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Destination(d) => r.dst = route_ip(d).unwrap_or(r.dst),
                        RouteAttribute::Gateway(g) => r.via = route_ip(g),
                        _ => {}
                    }
                }
                r
            })
            .collect())
    }

    /// Creates the VXLAN device `name` if missing (VNI `vni`, UDP `port`, tunnels from `local`,
    /// MTU `mtu`), then sets it up; returns its index. An existing device is left as it is.
    pub async fn ensure_vxlan(
        &self,
        name: &str,
        vni: u32,
        port: u16,
        local: std::net::Ipv4Addr,
        mtu: u32,
    ) -> Result<u32> {
        let msg = LinkVxlan::new(name, vni).port(port).local(local).mtu(mtu).build();
        self.ensure_link_up(name, msg, |name, source| Error::CreateLink { name, source }).await
    }

    /// Creates the link `name` from `msg` if it is missing (one created meanwhile is fine),
    /// then sets it up; returns its index.
    async fn ensure_link_up(
        &self,
        name: &str,
        msg: rtnetlink::packet_route::link::LinkMessage,
        create_error: fn(String, rtnetlink::Error) -> Error,
    ) -> Result<u32> {
        if self.link_index(name).await?.is_none() {
            match self.handle.link().add(msg).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                Err(source) => return Err(create_error(name.into(), source)),
            }
        }
        let index = self.must_index(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|source| Error::SetLink { name: name.into(), source })?;
        Ok(index)
    }

    /// The remote addresses that the all-zero (flooding) forwarding entries of a VXLAN device
    /// point at (`bridge fdb show dev LINK` lines `00:00:00:00:00:00 dst IP`).
    pub async fn flood_entries(&self, link: &str) -> Result<Vec<IpAddr>> {
        let index = self.must_index(link).await?;
        let req = self.handle.neighbours().get().set_address_family(rtnetlink::packet_route::AddressFamily::Bridge);
        let msgs: Vec<rtnetlink::packet_route::neighbour::NeighbourMessage> =
            req.execute().try_collect().await.map_err(|source| Error::ListNeighbours { link: link.into(), source })?;
        let mut out: Vec<IpAddr> = msgs
            .iter()
            .filter(|m| m.header.ifindex == index)
            .filter(|m| {
                m.attributes
                    .iter()
                    .any(|a| matches!(a, NeighbourAttribute::LinkLayerAddress(l) if l.iter().all(|b| *b == 0)))
            })
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Destination(d) => neighbour_ip(d),
                    _ => None,
                })
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Adds an all-zero forwarding entry to `dst` on a VXLAN device, beside those there
    /// already (`bridge fdb append 00:00:00:00:00:00 dev LINK dst DST`): broadcast and unknown
    /// destinations are flooded to `dst` too.
    pub async fn append_flood_entry(&self, link: &str, dst: IpAddr) -> Result<()> {
        use rtnetlink::packet_core::{
            NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST,
        };
        use rtnetlink::packet_route::RouteNetlinkMessage;
        let index = self.must_index(link).await?;
        let msg = flood_entry(index, dst);
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
        let fail = |source| Error::ReplaceNeighbour { link: link.into(), ip: dst, source };
        let mut handle = self.handle.clone();
        let mut replies = handle.request(req).map_err(fail)?;
        while let Some(reply) = futures::StreamExt::next(&mut replies).await {
            // An ack is an error message without a code; an identical entry is fine.
            if let NetlinkPayload::Error(e) = reply.payload {
                if e.code.is_some() {
                    let e = rtnetlink::Error::NetlinkError(e);
                    if errno(&e) != Some(libc::EEXIST) {
                        return Err(fail(e));
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes the all-zero forwarding entry to `dst` from a VXLAN device (`bridge fdb del
    /// 00:00:00:00:00:00 dev LINK dst DST`); one that is absent, or a missing device, is not an
    /// error.
    pub async fn del_flood_entry(&self, link: &str, dst: IpAddr) -> Result<()> {
        let Some(index) = self.link_index(link).await? else { return Ok(()) };
        match self.handle.neighbours().del(flood_entry(index, dst)).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(()),
            Err(source) => Err(Error::ReplaceNeighbour { link: link.into(), ip: dst, source }),
        }
    }

    /// Adds or replaces a route whose gateway is taken as on-link on `route.dev` even though
    /// no address of the link covers it (`ip route replace ... onlink`), as VXLAN routes need.
    pub async fn replace_route_onlink(&self, route: &Route) -> Result<()> {
        let dev = route.dev.as_deref().ok_or_else(|| Error::InvalidRoute {
            dst: route.dst,
            prefix: route.prefix,
            reason: "an on-link route needs a link".into(),
        })?;
        let index = self.must_index(dev).await?;
        let mut msg = Self::route_message(route, Some(index))?;
        msg.header.flags |= RouteFlags::Onlink;
        self.handle.route().add(msg).replace().execute().await.map_err(|source| Error::ReplaceRoute {
            dst: route.dst,
            prefix: route.prefix,
            source,
        })
    }

    /// The index of a link, `None` when it does not exist.
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>> {
        let mut links = self.handle.link().get().match_name(name.to_string()).execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(msg.header.index)),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(source) => Err(Error::GetLink { name: name.into(), source }),
        }
    }

    async fn must_index(&self, name: &str) -> Result<u32> {
        self.link_index(name).await?.ok_or_else(|| Error::LinkNotFound(name.into()))
    }

    async fn find_address(&self, link: &str, index: u32, addr: IpAddr) -> Result<Option<AddressMessage>> {
        let mut msgs = self.handle.address().get().set_link_index_filter(index).execute();
        loop {
            match msgs.try_next().await {
                Ok(Some(m)) => {
                    if address_of(&m) == Some(addr) {
                        return Ok(Some(m));
                    }
                }
                Ok(None) => return Ok(None),
                Err(source) => return Err(Error::ListAddresses { link: link.into(), source }),
            }
        }
    }

    fn route_message(route: &Route, index: Option<u32>) -> Result<rtnetlink::packet_route::route::RouteMessage> {
        let invalid = |reason: String| Error::InvalidRoute { dst: route.dst, prefix: route.prefix, reason };
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(route.dst, route.prefix)
            .map_err(|e| invalid(e.to_string()))?;
        if let Some(via) = route.via {
            b = b.gateway(via).map_err(|e| invalid(e.to_string()))?;
        }
        if let Some(i) = index {
            b = b.output_interface(i);
        }
        Ok(b.build())
    }
}

/// Runs `f` on a fresh thread that has entered the network namespace at `netns` (setns applies
/// to the calling thread only): sockets it makes stay in that namespace wherever they are used.
pub fn run_in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let ns = std::fs::File::open(netns).map_err(|source| Error::OpenNetns { path: netns.into(), source })?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Error::EnterNetns { path: netns.into(), source: e.into() })?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| {
                Err(Error::EnterNetns {
                    path: netns.into(),
                    source: std::io::Error::other("namespace thread panicked"),
                })
            })
    })
}

/// The all-zero forwarding entry of a VXLAN device (link `index`) that floods to `dst`.
fn flood_entry(index: u32, dst: IpAddr) -> rtnetlink::packet_route::neighbour::NeighbourMessage {
    let mut msg = rtnetlink::packet_route::neighbour::NeighbourMessage::default();
    msg.header.family = rtnetlink::packet_route::AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes.push(NeighbourAttribute::LinkLayerAddress(vec![0; 6]));
    msg.attributes.push(NeighbourAttribute::Destination(match dst {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }));
    msg
}

fn neighbour_ip(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        // Bridge-family replies carry the address as bare bytes.
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

fn route_ip(a: &rtnetlink::packet_route::route::RouteAddress) -> Option<IpAddr> {
    use rtnetlink::packet_route::route::RouteAddress;
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn address_of(m: &AddressMessage) -> Option<IpAddr> {
    // IPv4 point-to-point links carry the peer in Address and our own in Local.
    let local = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

impl Net for LinuxNet {
    async fn ensure_bridge(&self, name: &str) -> Result<u32> {
        self.ensure_link_up(name, LinkBridge::new(name).build(), |name, source| Error::CreateBridge { name, source })
            .await
    }

    async fn create_veth(&self, host: &str, peer: &str, netns: &Path, bridge: Option<&str>) -> Result<()> {
        let bridge = match bridge {
            Some(b) => Some(self.must_index(b).await?),
            None => None,
        };
        self.add_veth_into(host, peer, netns, bridge, None).await
    }

    async fn list_links(&self) -> Result<Vec<String>> {
        let msgs: Vec<rtnetlink::packet_route::link::LinkMessage> =
            self.handle.link().get().execute().try_collect().await.map_err(Error::ListLinks)?;
        let mut names: Vec<String> = msgs
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    rtnetlink::packet_route::link::LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })
            })
            .collect();
        names.sort();
        Ok(names)
    }

    async fn delete_link(&self, name: &str) -> Result<()> {
        let Some(index) = self.link_index(name).await? else { return Ok(()) };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            Err(source) => Err(Error::DeleteLink { name: name.into(), source }),
        }
    }

    async fn set_link_up(&self, name: &str, up: bool) -> Result<()> {
        let index = self.must_index(name).await?;
        let msg = LinkUnspec::new_with_index(index);
        let msg = if up { msg.up() } else { msg.down() };
        self.handle
            .link()
            .set(msg.build())
            .execute()
            .await
            .map_err(|source| Error::SetLink { name: name.into(), source })
    }

    async fn add_address(&self, link: &str, addr: Address) -> Result<()> {
        let index = self.must_index(link).await?;
        let mut req = self.handle.address().add(index, addr.addr, addr.prefix);
        if addr.addr.is_ipv6() {
            req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(source) => Err(Error::AddAddress { link: link.into(), addr: addr.addr, prefix: addr.prefix, source }),
        }
    }

    async fn del_address(&self, link: &str, addr: IpAddr) -> Result<()> {
        let Some(index) = self.link_index(link).await? else { return Ok(()) };
        let Some(msg) = self.find_address(link, index, addr).await? else { return Ok(()) };
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => Ok(()),
            Err(source) => Err(Error::DeleteAddress { link: link.into(), addr, source }),
        }
    }

    async fn list_addresses(&self, link: &str) -> Result<Vec<Address>> {
        let index = self.must_index(link).await?;
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|source| Error::ListAddresses { link: link.into(), source })?;
        let mut out: Vec<Address> = msgs
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| address_of(m).map(|addr| Address { addr, prefix: m.header.prefix_len }))
            .collect();
        out.sort();
        Ok(out)
    }

    async fn replace_route(&self, route: &Route) -> Result<()> {
        let index = match &route.dev {
            Some(d) => Some(self.must_index(d).await?),
            None => None,
        };
        let msg = Self::route_message(route, index)?;
        self.handle.route().add(msg).replace().execute().await.map_err(|source| Error::ReplaceRoute {
            dst: route.dst,
            prefix: route.prefix,
            source,
        })
    }

    async fn del_route(&self, route: &Route) -> Result<()> {
        let index = match &route.dev {
            Some(d) => match self.link_index(d).await? {
                Some(i) => Some(i),
                None => return Ok(()),
            },
            None => None,
        };
        let mut msg = Self::route_message(route, index)?;
        // Any scope, protocol and type match, as `ip route del` asks: a link-scope route, or
        // one another tool added, goes too.
        {
            use rtnetlink::packet_route::route::{RouteProtocol, RouteScope, RouteType};
            msg.header.scope = RouteScope::NoWhere;
            msg.header.protocol = RouteProtocol::Unspec;
            msg.header.kind = RouteType::Unspec;
        }
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(()),
            Err(source) => Err(Error::DeleteRoute { dst: route.dst, prefix: route.prefix, source }),
        }
    }

    async fn replace_neighbour(&self, link: &str, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
        let index = self.must_index(link).await?;
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|source| Error::ReplaceNeighbour { link: link.into(), ip, source })
    }
}

/// The hardware address of a link, from `sys_class_net/<link>/address` (`/sys/class/net`).
pub(crate) fn read_mac(sys_class_net: &Path, link: &str) -> Result<[u8; 6]> {
    let text = std::fs::read_to_string(sys_class_net.join(link).join("address"))
        .map_err(|source| Error::ReadMac { link: link.into(), source })?;
    parse_mac(text.trim()).ok_or_else(|| Error::ReadMac {
        link: link.into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not a MAC address: {}", text.trim())),
    })
}

pub(crate) fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}
