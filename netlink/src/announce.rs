//! Announcing that an address now lives on this node: gratuitous ARP for IPv4 (an ARP reply
//! and an ARP request from the address to broadcast, so both kinds of neighbour caches update)
//! and an unsolicited neighbour advertisement for IPv6 (to ff02::1, Override set, hop limit 255).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::net::read_mac;
use crate::{Error, Result};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const BROADCAST: [u8; 6] = [0xff; 6];

/// ARP opcode: request (1) or reply (2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpOp {
    Request = 1,
    Reply = 2,
}

/// An Ethernet frame carrying a gratuitous ARP for `ip` from `mac`.
pub fn arp_frame(mac: [u8; 6], ip: Ipv4Addr, op: ArpOp) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&ETH_P_IP.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&(op as u16).to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    let target_mac = if op == ArpOp::Reply { BROADCAST } else { [0; 6] };
    f[32..38].copy_from_slice(&target_mac);
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// An ICMPv6 neighbour advertisement for `ip` with the Override flag and the target
/// link-layer address option; the kernel fills in the checksum.
pub fn neighbour_advert(mac: [u8; 6], ip: Ipv6Addr) -> [u8; 32] {
    let mut m = [0u8; 32];
    m[0] = 136; // neighbour advertisement
    m[4] = 0x20; // Override
    m[8..24].copy_from_slice(&ip.octets());
    m[24] = 2; // target link-layer address
    m[25] = 1; // length in units of 8 bytes
    m[26..32].copy_from_slice(&mac);
    m
}

fn if_index(sys_class_net: &Path, link: &str) -> std::io::Result<u32> {
    let text = std::fs::read_to_string(sys_class_net.join(link).join("ifindex"))?;
    text.trim().parse().map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "ifindex"))
}

/// Announces `ip` on `link` of the calling thread's network namespace: gratuitous ARP for
/// IPv4, unsolicited NA for IPv6.
pub fn announce(link: &str, ip: IpAddr) -> Result<()> {
    let (index, mac) = link_info(link).map_err(|source| match ip {
        IpAddr::V4(_) => Error::SendArp { link: link.into(), ip, source },
        IpAddr::V6(_) => Error::SendNeighbourAdvert { link: link.into(), ip, source },
    })?;
    match ip {
        IpAddr::V4(v4) => send_gratuitous_arp(index, link, mac, v4),
        IpAddr::V6(v6) => send_neighbour_advert(index, link, mac, v6),
    }
}

/// The index and hardware address of `link`, asked of the kernel through a socket of the
/// calling thread's network namespace. `/sys/class/net` is not used: it shows the namespace
/// that mounted sysfs, which is not this one inside a container or a test rig.
pub fn link_info(link: &str) -> std::io::Result<(u32, [u8; 6])> {
    let name = std::ffi::CString::new(link)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "link name contains a NUL byte"))?;
    if name.as_bytes_with_nul().len() > libc::IFNAMSIZ {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "link name too long"));
    }
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(last_err());
    }
    // SAFETY: socket(2) with constant arguments; the result is checked before being owned.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(last_err());
    }
    // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads the name from and writes the address into `req`, a live
    // ifreq of the size the kernel expects.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR as _, &mut req as *mut libc::ifreq) };
    if r < 0 {
        return Err(last_err());
    }
    // SAFETY: after a successful SIOCGIFHWADDR the union holds `ifru_hwaddr`.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(hw.sa_data.iter()) {
        *dst = *src as u8;
    }
    Ok((index, mac))
}

/// [`announce`] reading the link's MAC under `sys_class_net`.
pub fn announce_with(sys_class_net: &Path, link: &str, ip: IpAddr) -> Result<()> {
    let mac = read_mac(sys_class_net, link)?;
    let index = if_index(sys_class_net, link).map_err(|source| match ip {
        IpAddr::V4(_) => Error::SendArp { link: link.into(), ip, source },
        IpAddr::V6(_) => Error::SendNeighbourAdvert { link: link.into(), ip, source },
    })?;
    match ip {
        IpAddr::V4(v4) => send_gratuitous_arp(index, link, mac, v4),
        IpAddr::V6(v6) => send_neighbour_advert(index, link, mac, v6),
    }
}

fn last_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// A raw ARP socket and the broadcast address on the link with index `index`.
fn arp_socket(index: u32) -> std::io::Result<(OwnedFd, libc::sockaddr_ll)> {
    // SAFETY: socket(2) with constant arguments; the result is checked before being owned.
    let raw =
        unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(ETH_P_ARP.to_be())) };
    if raw < 0 {
        return Err(last_err());
    }
    // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ARP.to_be();
    sll.sll_ifindex = index as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&BROADCAST);
    Ok((fd, sll))
}

/// Sends out of the link with index `index` a gratuitous ARP reply and request for `ip` from `mac` out of `link`.
pub fn send_gratuitous_arp(index: u32, link: &str, mac: [u8; 6], ip: Ipv4Addr) -> Result<()> {
    let err = |source| Error::SendArp { link: link.into(), ip: IpAddr::V4(ip), source };
    let (fd, sll) = arp_socket(index).map_err(err)?;
    for op in [ArpOp::Reply, ArpOp::Request] {
        let frame = arp_frame(mac, ip, op);
        // SAFETY: the buffer and the address point to live stack values of the lengths passed.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(err(last_err()));
        }
    }
    Ok(())
}

/// Asks the link who answers for `ip` before taking it (an RFC 5227 probe: ARP request from
/// 0.0.0.0) and listens for `wait`; returns the MAC of another host that answered, if any.
/// IPv6 addresses are not probed (None).
pub fn probe(link: &str, ip: IpAddr, wait: std::time::Duration) -> Result<Option<[u8; 6]>> {
    let IpAddr::V4(v4) = ip else { return Ok(None) };
    let err = |source| Error::ProbeArp { link: link.into(), ip, source };
    let (index, mac) = link_info(link).map_err(err)?;
    let (fd, sll) = arp_socket(index).map_err(err)?;
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: the address points to a live sockaddr_ll of the size passed.
    if unsafe { libc::bind(fd.as_raw_fd(), (&sll as *const libc::sockaddr_ll).cast(), len) } < 0 {
        return Err(err(last_err()));
    }
    let mut frame = arp_frame(mac, v4, ArpOp::Request);
    frame[28..32].copy_from_slice(&[0; 4]); // sender IP 0.0.0.0: a probe, no cache takes it in
                                            // SAFETY: the buffer and the address point to live stack values of the lengths passed.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sll as *const libc::sockaddr_ll).cast(),
            len,
        )
    };
    if n < 0 {
        return Err(err(last_err()));
    }
    let end = std::time::Instant::now() + wait;
    let mut buf = [0u8; 128];
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: `pfd` is a live pollfd and the count passed is 1.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = last_err();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err(e));
        }
        if r == 0 {
            return Ok(None);
        }
        // SAFETY: the buffer is live and its length is passed.
        let got = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if got < 0 {
            continue;
        }
        let f = &buf[..got as usize];
        // an ARP reply (or another host's probe / announcement) from someone else claiming `ip`
        if f.len() >= 42 && f[12..14] == ETH_P_ARP.to_be_bytes() && f[28..32] == v4.octets() && f[22..28] != mac {
            let mut other = [0u8; 6];
            other.copy_from_slice(&f[22..28]);
            return Ok(Some(other));
        }
    }
}

fn set_int_opt(fd: &OwnedFd, level: i32, name: i32, value: i32) -> std::io::Result<()> {
    // SAFETY: the option value points to a live i32 and its size is passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(last_err())
    } else {
        Ok(())
    }
}

fn sockaddr6(ip: Ipv6Addr, scope: u32) -> libc::sockaddr_in6 {
    // SAFETY: sockaddr_in6 is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as u16;
    sa.sin6_addr.s6_addr = ip.octets();
    sa.sin6_scope_id = scope;
    sa
}

/// Sends out of the link with index `index` an unsolicited neighbour advertisement for `ip` (which must be an address of `link`)
/// to all nodes.
pub fn send_neighbour_advert(index: u32, link: &str, mac: [u8; 6], ip: Ipv6Addr) -> Result<()> {
    let err = |source| Error::SendNeighbourAdvert { link: link.into(), ip: IpAddr::V6(ip), source };
    // SAFETY: socket(2) with constant arguments; the result is checked before being owned.
    let raw = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6) };
    if raw < 0 {
        return Err(err(last_err()));
    }
    // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_int_opt(&fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, 255).map_err(err)?;
    set_int_opt(&fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, 255).map_err(err)?;
    set_int_opt(&fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF, index as i32).map_err(err)?;
    let scope = if ip.is_unicast_link_local() { index } else { 0 };
    let src = sockaddr6(ip, scope);
    // SAFETY: the address points to a live sockaddr_in6 of the size passed.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&src as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(err(last_err()));
    }
    let dst = sockaddr6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), index);
    let msg = neighbour_advert(mac, ip);
    // SAFETY: the buffer and the address point to live stack values of the lengths passed.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&dst as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(err(last_err()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];

    #[test]
    fn arp_reply_is_broadcast_from_the_vip() {
        let f = arp_frame(MAC, Ipv4Addr::new(192, 168, 1, 240), ArpOp::Reply);
        assert_eq!(&f[0..6], &BROADCAST);
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 2]);
        assert_eq!(&f[22..28], &MAC);
        assert_eq!(&f[28..32], &[192, 168, 1, 240]);
        assert_eq!(&f[38..42], &[192, 168, 1, 240]);
        let req = arp_frame(MAC, Ipv4Addr::new(192, 168, 1, 240), ArpOp::Request);
        assert_eq!(&req[20..22], &[0, 1]);
        assert_eq!(&req[32..38], &[0; 6]);
    }

    #[test]
    fn neighbour_advert_overrides_and_carries_the_mac() {
        let ip: Ipv6Addr = "fd00::240".parse().unwrap();
        let m = neighbour_advert(MAC, ip);
        assert_eq!(m[0], 136);
        assert_eq!(m[4], 0x20);
        assert_eq!(&m[8..24], &ip.octets());
        assert_eq!(&m[24..26], &[2, 1]);
        assert_eq!(&m[26..32], &MAC);
    }

    #[test]
    fn mac_is_read_from_sysfs() {
        let dir = std::env::temp_dir().join(format!("shoal-netlink-mac-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("eth9")).unwrap();
        std::fs::write(dir.join("eth9/address"), "02:42:ac:11:00:02\n").unwrap();
        assert_eq!(read_mac(&dir, "eth9").unwrap(), MAC);
        assert!(read_mac(&dir, "eth8").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
