//! Services' `spec.externalIPs`, refused unless inside `[admission] external_ip_cidrs` (the
//! CVE-2020-8554 class: an externalIP lets any Service owner capture traffic to that address
//! from every pod). Upstream's DenyServiceExternalIPs with an allow-list; addresses a Service
//! already had stay allowed on update.
use std::net::IpAddr;

use serde_json::Value;
use shoal_kube::Resource;

use super::{forbidden, Error};

/// Whether `ip` is inside `cidr` (`10.0.0.0/8`, `2001:db8::/32`, or one address).
fn contains(cidr: &str, ip: IpAddr) -> bool {
    let (net, len) = match cidr.split_once('/') {
        Some((n, l)) => (n, l.parse::<u32>().ok()),
        None => (cidr, None),
    };
    let Ok(net) = net.trim().parse::<IpAddr>() else { return false };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let len = len.unwrap_or(32);
            if len > 32 {
                return false;
            }
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let len = len.unwrap_or(128);
            if len > 128 {
                return false;
            }
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

fn external_ips(obj: &Value) -> Vec<&str> {
    obj["spec"]["externalIPs"].as_array().into_iter().flatten().filter_map(Value::as_str).collect()
}

/// Refuses a Service whose new externalIPs are not all inside `cidrs`.
pub(crate) fn check(cidrs: &[String], res: &Resource, obj: &Value, old: Option<&Value>) -> Result<(), Error> {
    if !(res.group.is_empty() && res.kind == "Service") {
        return Ok(());
    }
    let before = old.map(external_ips).unwrap_or_default();
    for ip in external_ips(obj).into_iter().filter(|ip| !before.contains(ip)) {
        let allowed = ip.parse::<IpAddr>().is_ok_and(|addr| cidrs.iter().any(|c| contains(c, addr)));
        if !allowed {
            let why = if cidrs.is_empty() {
                "Use of external IPs is denied by admission control".to_string()
            } else {
                format!(
                    "Use of external IPs is denied by admission control: {ip} is not in [admission] external_ip_cidrs"
                )
            };
            return Err(forbidden(res, obj, &why));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_addresses_in_the_allow_list_pass() {
        let svc = shoal_kube::resources::lookup("", "services");
        let obj = |ips: &[&str]| json!({"metadata": {"name": "s"}, "spec": {"externalIPs": ips}});
        let none: Vec<String> = vec![];
        match check(&none, &svc, &obj(&["203.0.113.5"]), None) {
            Err(Error::Forbidden { message }) => {
                assert_eq!(message, "services \"s\" is forbidden: Use of external IPs is denied by admission control")
            }
            other => panic!("{other:?}"),
        }
        assert!(check(&none, &svc, &obj(&[]), None).is_ok());
        let allow = vec!["192.168.10.0/24".to_string(), "2001:db8::/32".to_string()];
        assert!(check(&allow, &svc, &obj(&["192.168.10.7", "2001:db8::1"]), None).is_ok());
        assert!(check(&allow, &svc, &obj(&["192.168.11.7"]), None).is_err());
        assert!(check(&allow, &svc, &obj(&["not-an-ip"]), None).is_err());
        // An address the Service already had stays.
        let old = obj(&["198.51.100.1"]);
        assert!(check(&none, &svc, &obj(&["198.51.100.1"]), Some(&old)).is_ok());
    }
}
