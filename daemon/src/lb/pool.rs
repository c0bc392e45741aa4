//! Address pools (MetalLB's `IPAddressPool`, plus the node config's default pool) and the
//! choice of an IP for a Service.
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::Value;

use super::LbError;

/// Name of the pool built from the node config.
pub const DEFAULT_POOL: &str = "shoal-default";
/// The most addresses scanned in one range when looking for a free one.
const SCAN_LIMIT: u128 = 1 << 16;

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Range {
    pub first: IpAddr,
    pub last: IpAddr,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(v: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(v))
    } else {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    }
}

impl Range {
    /// `10.0.0.0/24`, `10.0.0.5-10.0.0.9`, or one address.
    pub(crate) fn parse(s: &str) -> Result<Range, LbError> {
        let bad = || LbError::ParseAddresses(s.to_string());
        let s = s.trim();
        if let Some((a, b)) = s.split_once('-') {
            let first: IpAddr = a.trim().parse().map_err(|_| bad())?;
            let last: IpAddr = b.trim().parse().map_err(|_| bad())?;
            if first.is_ipv4() != last.is_ipv4() || to_u128(first) > to_u128(last) {
                return Err(bad());
            }
            return Ok(Range { first, last });
        }
        let (ip, bits) = match s.split_once('/') {
            Some((ip, p)) => (ip.parse::<IpAddr>().map_err(|_| bad())?, p.parse::<u32>().map_err(|_| bad())?),
            None => {
                let ip: IpAddr = s.parse().map_err(|_| bad())?;
                (ip, if ip.is_ipv4() { 32 } else { 128 })
            }
        };
        let width = if ip.is_ipv4() { 32 } else { 128 };
        if bits > width {
            return Err(bad());
        }
        let host_bits = width - bits;
        let mask: u128 = if host_bits >= 128 { u128::MAX } else { (1u128 << host_bits) - 1 };
        let base = to_u128(ip) & !mask;
        Ok(Range { first: from_u128(base, ip.is_ipv6()), last: from_u128(base | mask, ip.is_ipv6()) })
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.first.is_ipv4() && to_u128(self.first) <= to_u128(ip) && to_u128(ip) <= to_u128(self.last)
    }
}

/// One pool: MetalLB `IPAddressPool` semantics.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pool {
    pub name: String,
    pub ranges: Vec<Range>,
    pub auto_assign: bool,
    pub avoid_buggy_ips: bool,
    /// Lower is preferred; None comes after every number.
    pub priority: Option<i64>,
    pub namespaces: Vec<String>,
    pub namespace_selectors: Vec<Value>,
    pub service_selectors: Vec<Value>,
}

impl Pool {
    /// The shoal-native pool from the node config.
    pub(crate) fn default_pool(addresses: &[String]) -> Result<Option<Pool>, LbError> {
        if addresses.is_empty() {
            return Ok(None);
        }
        Ok(Some(Pool {
            name: DEFAULT_POOL.into(),
            ranges: addresses.iter().map(|a| Range::parse(a)).collect::<Result<_, _>>()?,
            auto_assign: true,
            avoid_buggy_ips: false,
            priority: None,
            namespaces: vec![],
            namespace_selectors: vec![],
            service_selectors: vec![],
        }))
    }

    /// An `IPAddressPool` object; ranges that do not parse are skipped (and logged).
    pub(crate) fn from_object(obj: &Value) -> Option<Pool> {
        let name = obj["metadata"]["name"].as_str()?.to_string();
        let spec = &obj["spec"];
        let mut ranges = Vec::new();
        for a in spec["addresses"].as_array().into_iter().flatten().filter_map(|a| a.as_str()) {
            match Range::parse(a) {
                Ok(r) => ranges.push(r),
                Err(error) => tracing::warn!(pool = %name, %error, "address range ignored"),
            }
        }
        let alloc = &spec["serviceAllocation"];
        let arr = |v: &Value| v.as_array().cloned().unwrap_or_default();
        Some(Pool {
            name,
            ranges,
            auto_assign: spec["autoAssign"].as_bool().unwrap_or(true),
            avoid_buggy_ips: spec["avoidBuggyIPs"].as_bool().unwrap_or(false),
            priority: alloc["priority"].as_i64(),
            namespaces: arr(&alloc["namespaces"]).iter().filter_map(|v| v.as_str().map(String::from)).collect(),
            namespace_selectors: arr(&alloc["namespaceSelectors"]),
            service_selectors: arr(&alloc["serviceSelectors"]),
        })
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip)) && !(self.avoid_buggy_ips && is_buggy(ip))
    }

    /// Whether the pool's serviceAllocation admits the Service (namespace labels given).
    pub(crate) fn admits(&self, svc: &Value, ns_labels: &BTreeMap<String, String>) -> bool {
        let ns = svc["metadata"]["namespace"].as_str().unwrap_or("default");
        let svc_labels = labels(svc);
        let ns_ok = (self.namespaces.is_empty() && self.namespace_selectors.is_empty())
            || self.namespaces.iter().any(|n| n == ns)
            || self.namespace_selectors.iter().any(|s| selector_matches(s, ns_labels));
        let svc_ok = self.service_selectors.is_empty()
            || self.service_selectors.iter().any(|s| selector_matches(s, &svc_labels));
        ns_ok && svc_ok
    }

    /// The first address of the pool of `family` (v6 or not) for which `free` says yes.
    pub(crate) fn first_free(&self, v6: bool, free: &dyn Fn(IpAddr) -> bool) -> Option<IpAddr> {
        for r in self.ranges.iter().filter(|r| r.first.is_ipv6() == v6) {
            let (lo, hi) = (to_u128(r.first), to_u128(r.last));
            let hi = hi.min(lo.saturating_add(SCAN_LIMIT));
            let mut v = lo;
            while v <= hi {
                let ip = from_u128(v, v6);
                if !(self.avoid_buggy_ips && is_buggy(ip)) && free(ip) {
                    return Some(ip);
                }
                if v == u128::MAX {
                    break;
                }
                v += 1;
            }
        }
        None
    }
}

/// `.0` and `.255` IPv4 addresses, which some clients mishandle.
fn is_buggy(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if matches!(v4.octets()[3], 0 | 255))
}

pub(crate) fn labels(obj: &Value) -> BTreeMap<String, String> {
    obj["metadata"]["labels"]
        .as_object()
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect())
        .unwrap_or_default()
}

/// A `LabelSelector` (matchLabels and matchExpressions) against labels.
pub(crate) fn selector_matches(sel: &Value, labels: &BTreeMap<String, String>) -> bool {
    shoal_kube::selector::label_selector_matches(sel, |k| labels.get(k).map(String::as_str))
}

/// Pools in the order auto-assignment tries them: priority (lower first, unset last), then name.
pub(crate) fn ordered(pools: &mut [Pool]) {
    pools.sort_by(|a, b| {
        let key = |p: &Pool| (p.priority.is_none(), p.priority.unwrap_or(0));
        key(a).cmp(&key(b)).then_with(|| a.name.cmp(&b.name))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ranges_parse_from_cidrs_dashes_and_single_addresses() {
        let r = Range::parse("10.77.0.240-10.77.0.250").unwrap();
        assert!(r.contains("10.77.0.245".parse().unwrap()));
        assert!(!r.contains("10.77.0.251".parse().unwrap()));
        let c = Range::parse("192.168.10.0/24").unwrap();
        assert_eq!(c.first, "192.168.10.0".parse::<IpAddr>().unwrap());
        assert_eq!(c.last, "192.168.10.255".parse::<IpAddr>().unwrap());
        let one = Range::parse("fd00::7").unwrap();
        assert_eq!(one.first, one.last);
        assert!(Range::parse("10.0.0.9-10.0.0.1").is_err());
        assert!(Range::parse("10.0.0.1-fd00::1").is_err());
        assert!(Range::parse("10.0.0.0/33").is_err());
    }

    #[test]
    fn avoid_buggy_ips_skips_zero_and_broadcast() {
        let obj = json!({"metadata": {"name": "p"}, "spec": {"addresses": ["10.0.0.0/24"], "avoidBuggyIPs": true}});
        let p = Pool::from_object(&obj).unwrap();
        assert_eq!(p.first_free(false, &|_| true), Some("10.0.0.1".parse().unwrap()));
        assert!(!p.contains("10.0.0.255".parse().unwrap()));
    }

    #[test]
    fn service_allocation_filters_namespaces_and_labels() {
        let obj = json!({"metadata": {"name": "p"}, "spec": {"addresses": ["10.0.0.0/24"], "serviceAllocation": {
            "priority": 10, "namespaces": ["prod"], "serviceSelectors": [{"matchLabels": {"tier": "web"}}]}}});
        let p = Pool::from_object(&obj).unwrap();
        let none = BTreeMap::new();
        let svc = |ns: &str, tier: &str| json!({"metadata": {"namespace": ns, "labels": {"tier": tier}}});
        assert!(p.admits(&svc("prod", "web"), &none));
        assert!(!p.admits(&svc("dev", "web"), &none));
        assert!(!p.admits(&svc("prod", "db"), &none));
    }

    #[test]
    fn pools_are_tried_by_priority_then_name() {
        let mk = |n: &str, pr: Option<i64>| Pool {
            priority: pr,
            name: n.into(),
            ..Pool::default_pool(&["10.0.0.1".into()]).unwrap().unwrap()
        };
        let mut ps = vec![mk("z", None), mk("b", Some(20)), mk("a", None), mk("c", Some(5))];
        ordered(&mut ps);
        let names: Vec<_> = ps.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["c", "b", "a", "z"]);
    }
}
