//! The cluster's Service range (`[network] service_cidr`): where ClusterIPs come from, and the
//! two addresses the cluster keeps for itself, the `kubernetes` Service (the first) and cluster
//! DNS (the tenth), as kube-apiserver and k3s place them.
use std::fmt;
use std::net::Ipv4Addr;

/// Addresses at the start of the range handed out only when asked for by name.
pub const RESERVED_LOW: u32 = 16;
/// The longest prefix accepted: a /27 still leaves addresses to allocate past the reserved ones.
pub const MAX_PREFIX: u8 = 27;

/// An IPv4 Service range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceCidr {
    base: u32,
    prefix: u8,
}

impl Default for ServiceCidr {
    fn default() -> Self {
        ServiceCidr { base: u32::from_be_bytes([10, 43, 0, 0]), prefix: 16 }
    }
}

impl ServiceCidr {
    /// Parses `a.b.c.d/n`: IPv4, the address the network's own, n from 8 to [`MAX_PREFIX`].
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, len) = s.split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR (e.g. 10.43.0.0/16)"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| format!("{s:?}: {addr:?} is not an IPv4 address"))?;
        let prefix: u8 = len.parse().map_err(|_| format!("{s:?}: {len:?} is not a prefix length"))?;
        if !(8..=MAX_PREFIX).contains(&prefix) {
            return Err(format!(
                "{s:?}: the prefix must be from /8 to /{MAX_PREFIX} (the first {RESERVED_LOW} addresses are reserved)"
            ));
        }
        let base = u32::from(addr);
        let mask = u32::MAX << (32 - prefix);
        if base & !mask != 0 {
            return Err(format!("{s:?}: host bits are set (did you mean {}/{prefix}?)", Ipv4Addr::from(base & mask)));
        }
        Ok(ServiceCidr { base, prefix })
    }

    /// How many addresses the range spans.
    pub fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    /// The `n`th address of the range (0 is the network address).
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.base.wrapping_add(n % self.size()))
    }

    /// The `kubernetes` Service's ClusterIP: the first address.
    pub fn kubernetes_ip(&self) -> Ipv4Addr {
        self.nth(1)
    }

    /// The cluster DNS Service's ClusterIP: the tenth address.
    pub fn dns_ip(&self) -> Ipv4Addr {
        self.nth(10)
    }

    /// Whether `ip` can be a ClusterIP: inside, neither the network nor the broadcast address.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        n > self.base && n - self.base < self.size() - 1
    }

    /// The addresses handed out when none is asked for: past the reserved ones, before the
    /// broadcast address, as offsets from the network address.
    pub fn dynamic_offsets(&self) -> std::ops::Range<u32> {
        RESERVED_LOW..self.size() - 1
    }
}

impl fmt::Display for ServiceCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_a_range() {
        let c = ServiceCidr::parse("10.96.0.0/12").unwrap();
        assert_eq!(c.kubernetes_ip().to_string(), "10.96.0.1");
        assert_eq!(c.dns_ip().to_string(), "10.96.0.10");
        assert_eq!(c.to_string(), "10.96.0.0/12");
        assert!(c.contains("10.111.255.254".parse().unwrap()));
        assert!(!c.contains("10.111.255.255".parse().unwrap()));
        assert!(!c.contains("10.96.0.0".parse().unwrap()));
        assert!(!c.contains("10.43.0.5".parse().unwrap()));
        assert_eq!(ServiceCidr::default().to_string(), "10.43.0.0/16");
    }

    #[test]
    fn bad_or_too_small_ranges_are_refused() {
        for bad in [
            "10.96.0.0",
            "10.96.0.0/28",
            "10.96.0.0/32",
            "10.96.0.1/12",
            "fd00::/108",
            "x/16",
            "10.0.0.0/x",
            "0.0.0.0/0",
        ] {
            assert!(ServiceCidr::parse(bad).is_err(), "{bad}");
        }
        assert!(ServiceCidr::parse("10.96.0.0/28").unwrap_err().contains("prefix"));
        assert!(ServiceCidr::parse("192.168.5.0/27").is_ok());
    }
}
