//! Cluster names answered from the local replica: Services (ClusterIP, headless, ExternalName),
//! their named ports (SRV), pods behind headless Services, and reverse lookups of ClusterIPs
//! and pod IPs.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::Value;
use shoal_kube::{resources, Objects, Resource};

use super::DnsError;

/// The cluster domain every Service name ends in.
pub(crate) const DOMAIN: &str = "cluster.local";
/// TTL of answers from the replica, as CoreDNS's kubernetes plugin.
pub(crate) const TTL: u32 = 5;

/// What a query for a cluster name produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The name is not ours: forward it upstream.
    NotOurs,
    /// The name does not exist (NXDOMAIN).
    NoSuchName,
    /// The name exists; these records (possibly none) answer the query type.
    Records(Vec<Rec>),
}

/// One record of an answer, owner name included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rec {
    A(String, Ipv4Addr),
    Aaaa(String, Ipv6Addr),
    Cname(String, String),
    Srv { name: String, port: u16, target: String },
    Ptr(String, String),
}

/// The query types the cluster zone knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Qtype {
    A,
    Aaaa,
    Srv,
    Ptr,
    Cname,
    Any,
    Other,
}

fn res(plural: &str) -> Resource {
    resources::lookup("", plural)
}

/// Reads the replica to answer cluster names.
#[derive(Clone)]
pub(crate) struct Zone {
    objects: Objects,
    services: Resource,
    endpoints: Resource,
    pods: Resource,
}

/// A query name split around `svc.cluster.local`.
fn svc_labels(name: &str) -> Option<Vec<&str>> {
    let rest = name.strip_suffix(".svc.cluster.local")?;
    Some(rest.split('.').collect())
}

fn ips_of(v: &Value) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    let mut push = |s: Option<&str>| {
        if let Some(ip) = s.and_then(|s| s.parse().ok()) {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    };
    for ip in v["spec"]["clusterIPs"].as_array().into_iter().flatten() {
        push(ip.as_str());
    }
    push(v["spec"]["clusterIP"].as_str());
    out
}

fn is_headless(svc: &Value) -> bool {
    svc["spec"]["clusterIP"].as_str() == Some("None")
}

fn addr_rec(name: &str, ip: IpAddr) -> Rec {
    match ip {
        IpAddr::V4(v4) => Rec::A(name.to_string(), v4),
        IpAddr::V6(v6) => Rec::Aaaa(name.to_string(), v6),
    }
}

fn wanted(q: Qtype, r: &Rec) -> bool {
    matches!(
        (q, r),
        (Qtype::Any, _)
            | (_, Rec::Cname(..))
            | (Qtype::A, Rec::A(..))
            | (Qtype::Aaaa, Rec::Aaaa(..))
            | (Qtype::Srv, Rec::Srv { .. })
            | (Qtype::Ptr, Rec::Ptr(..))
    )
}

/// `1.2.3.4` as `1-2-3-4`, the pod name form.
fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// The IP a reverse name stands for (`4.3.2.1.in-addr.arpa`, nibbles for ip6.arpa).
pub(crate) fn reverse_ip(name: &str) -> Option<IpAddr> {
    if let Some(rest) = name.strip_suffix(".in-addr.arpa") {
        let mut parts: Vec<u8> = Vec::with_capacity(4);
        for p in rest.split('.') {
            parts.push(p.parse().ok()?);
        }
        if parts.len() != 4 {
            return None;
        }
        parts.reverse();
        return Some(IpAddr::V4(Ipv4Addr::new(parts[0], parts[1], parts[2], parts[3])));
    }
    let rest = name.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<&str> = rest.split('.').collect();
    if nibbles.len() != 32 {
        return None;
    }
    let mut hex = String::with_capacity(32);
    for n in nibbles.iter().rev() {
        if n.len() != 1 {
            return None;
        }
        hex.push_str(n);
    }
    let v = u128::from_str_radix(&hex, 16).ok()?;
    Some(IpAddr::V6(Ipv6Addr::from(v)))
}

impl Zone {
    pub(crate) fn new(objects: Objects) -> Self {
        Zone { objects, services: res("services"), endpoints: res("endpoints"), pods: res("pods") }
    }

    /// Answers `name` (lower case, no trailing dot) for `q`.
    pub(crate) async fn answer(&self, name: &str, q: Qtype) -> Result<Answer, DnsError> {
        if let Some(ip) = reverse_ip(name) {
            return self.reverse(name, ip).await;
        }
        if name != DOMAIN && !name.ends_with(".cluster.local") {
            return Ok(Answer::NotOurs);
        }
        let records = match svc_labels(name) {
            Some(labels) => self.service_name(name, &labels).await?,
            None => match name.strip_suffix(".pod.cluster.local") {
                Some(rest) => self.pod_name(name, rest).await?,
                None => None,
            },
        };
        Ok(match records {
            None if is_zone_apex(name) => Answer::Records(Vec::new()),
            None => Answer::NoSuchName,
            Some(rs) => Answer::Records(rs.into_iter().filter(|r| wanted(q, r)).collect()),
        })
    }

    async fn service(&self, ns: &str, name: &str) -> Result<Option<Value>, DnsError> {
        self.objects.get(&self.services, Some(ns), name).await.map_err(DnsError::ReadReplica)
    }

    /// Ready addresses of a Service's Endpoints (notReady ones too when it publishes them).
    async fn endpoint_addresses(&self, svc: &Value, ns: &str, name: &str) -> Result<Vec<Value>, DnsError> {
        let Some(ep) = self.objects.get(&self.endpoints, Some(ns), name).await.map_err(DnsError::ReadReplica)? else {
            return Ok(Vec::new());
        };
        let publish = svc["spec"]["publishNotReadyAddresses"].as_bool() == Some(true);
        let mut out = Vec::new();
        for s in ep["subsets"].as_array().into_iter().flatten() {
            out.extend(s["addresses"].as_array().into_iter().flatten().cloned());
            if publish {
                out.extend(s["notReadyAddresses"].as_array().into_iter().flatten().cloned());
            }
        }
        Ok(out)
    }

    /// Records for a name under `svc.cluster.local`; None when it does not exist.
    async fn service_name(&self, name: &str, labels: &[&str]) -> Result<Option<Vec<Rec>>, DnsError> {
        match labels {
            [svc, ns] => {
                let Some(s) = self.service(ns, svc).await? else { return Ok(None) };
                if let Some(ext) = s["spec"]["externalName"].as_str().filter(|_| s["spec"]["type"] == "ExternalName") {
                    return Ok(Some(vec![Rec::Cname(name.to_string(), ext.trim_end_matches('.').to_lowercase())]));
                }
                if !is_headless(&s) {
                    return Ok(Some(ips_of(&s).into_iter().map(|ip| addr_rec(name, ip)).collect()));
                }
                let mut out = Vec::new();
                for a in self.endpoint_addresses(&s, ns, svc).await? {
                    if let Some(ip) = a["ip"].as_str().and_then(|i| i.parse::<IpAddr>().ok()) {
                        if !out.contains(&addr_rec(name, ip)) {
                            out.push(addr_rec(name, ip));
                        }
                    }
                }
                Ok(Some(out))
            }
            [port, proto, svc, ns] if port.starts_with('_') && proto.starts_with('_') => {
                let Some(s) = self.service(ns, svc).await? else { return Ok(None) };
                let (port, proto) = (&port[1..], &proto[1..]);
                let found = s["spec"]["ports"].as_array().into_iter().flatten().find(|p| {
                    p["name"].as_str() == Some(port)
                        && p["protocol"].as_str().unwrap_or("TCP").eq_ignore_ascii_case(proto)
                });
                let Some(p) = found else { return Ok(None) };
                let Some(number) = p["port"].as_u64().and_then(|n| u16::try_from(n).ok()) else { return Ok(None) };
                let svc_fqdn = format!("{svc}.{ns}.svc.{DOMAIN}");
                if !is_headless(&s) {
                    let mut out = vec![Rec::Srv { name: name.to_string(), port: number, target: svc_fqdn.clone() }];
                    out.extend(ips_of(&s).into_iter().map(|ip| addr_rec(&svc_fqdn, ip)));
                    return Ok(Some(out));
                }
                let mut out = Vec::new();
                let mut extra = Vec::new();
                for a in self.endpoint_addresses(&s, ns, svc).await? {
                    let Some(ip) = a["ip"].as_str().and_then(|i| i.parse::<IpAddr>().ok()) else { continue };
                    let host = a["hostname"].as_str().map(String::from).unwrap_or_else(|| dashed(ip));
                    let target = format!("{host}.{svc_fqdn}");
                    out.push(Rec::Srv { name: name.to_string(), port: number, target: target.clone() });
                    extra.push(addr_rec(&target, ip));
                }
                out.extend(extra);
                Ok(Some(out))
            }
            [host, svc, ns] => {
                let Some(s) = self.service(ns, svc).await? else { return Ok(None) };
                if !is_headless(&s) {
                    return Ok(None);
                }
                let mut out = Vec::new();
                for a in self.endpoint_addresses(&s, ns, svc).await? {
                    let Some(ip) = a["ip"].as_str().and_then(|i| i.parse::<IpAddr>().ok()) else { continue };
                    let h = a["hostname"].as_str().map(String::from).unwrap_or_else(|| dashed(ip));
                    if h.eq_ignore_ascii_case(host) {
                        out.push(addr_rec(name, ip));
                    }
                }
                Ok(if out.is_empty() { None } else { Some(out) })
            }
            [ns] => {
                // A namespace name exists as an empty node of the tree.
                Ok(Some(Vec::new()).filter(|_| !ns.is_empty()))
            }
            _ => Ok(None),
        }
    }

    /// `a-b-c-d.ns.pod.cluster.local`: answered from the name itself when a pod has that IP.
    async fn pod_name(&self, name: &str, rest: &str) -> Result<Option<Vec<Rec>>, DnsError> {
        let Some((ip_part, ns)) = rest.split_once('.') else { return Ok(None) };
        let Ok(ip) = ip_part.replace('-', ".").parse::<Ipv4Addr>() else { return Ok(None) };
        let (pods, _) = self.objects.list(&self.pods, Some(ns)).await.map_err(DnsError::ReadReplica)?;
        let has = pods.iter().any(|p| p["status"]["podIP"].as_str() == Some(&ip.to_string()));
        Ok(has.then(|| vec![Rec::A(name.to_string(), ip)]))
    }

    async fn reverse(&self, name: &str, ip: IpAddr) -> Result<Answer, DnsError> {
        let ip_s = ip.to_string();
        let (svcs, _) = self.objects.list(&self.services, None).await.map_err(DnsError::ReadReplica)?;
        for s in &svcs {
            if ips_of(s).contains(&ip) {
                let (Some(n), Some(ns)) = (shoal_kube::objects::name_of(s), shoal_kube::objects::namespace_of(s))
                else {
                    continue;
                };
                return Ok(Answer::Records(vec![Rec::Ptr(name.to_string(), format!("{n}.{ns}.svc.{DOMAIN}"))]));
            }
        }
        let (pods, _) = self.objects.list(&self.pods, None).await.map_err(DnsError::ReadReplica)?;
        for p in &pods {
            let has = p["status"]["podIP"].as_str() == Some(&ip_s)
                || p["status"]["podIPs"].as_array().into_iter().flatten().any(|x| x["ip"].as_str() == Some(&ip_s));
            if !has || p["spec"]["hostNetwork"].as_bool() == Some(true) {
                continue;
            }
            let ns = shoal_kube::objects::namespace_of(p).unwrap_or("default");
            let target = match (p["spec"]["hostname"].as_str(), p["spec"]["subdomain"].as_str()) {
                (Some(h), Some(sd)) => format!("{h}.{sd}.{ns}.svc.{DOMAIN}"),
                _ => format!("{}.{ns}.pod.{DOMAIN}", dashed(ip)),
            };
            return Ok(Answer::Records(vec![Rec::Ptr(name.to_string(), target)]));
        }
        Ok(Answer::NotOurs)
    }
}

fn is_zone_apex(name: &str) -> bool {
    matches!(name, "cluster.local" | "svc.cluster.local" | "pod.cluster.local")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;
    use shoal_store::Store;

    pub(crate) async fn seeded() -> Objects {
        let objects = Objects::new(Store::in_memory());
        let svcs = res("services");
        let eps = res("endpoints");
        let pods = res("pods");
        let create = |r: &Resource, v: Value| {
            let objects = objects.clone();
            let r = r.clone();
            async move { objects.create(&r, Some("default"), v).await.map(|_| ()) }
        };
        create(&svcs, json!({"metadata": {"name": "svc-node"}, "spec": {"type": "ClusterIP", "clusterIP": "10.43.0.20", "clusterIPs": ["10.43.0.20"], "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}})).await.unwrap();
        create(&svcs, json!({"metadata": {"name": "external-service"}, "spec": {"type": "ExternalName", "externalName": "google.com"}})).await.unwrap();
        create(&svcs, json!({"metadata": {"name": "web"}, "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}})).await.unwrap();
        create(
            &eps,
            json!({"metadata": {"name": "web"}, "subsets": [{"addresses": [
            {"ip": "10.42.1.5", "hostname": "web-0"},
            {"ip": "10.42.2.7", "hostname": "web-1"}],
            "notReadyAddresses": [{"ip": "10.42.3.9", "hostname": "web-2"}],
            "ports": [{"name": "http", "port": 80}]}]}),
        )
        .await
        .unwrap();
        create(&pods, json!({"metadata": {"name": "web-0"}, "spec": {"hostname": "web-0", "subdomain": "web"}, "status": {"podIP": "10.42.1.5"}})).await.unwrap();
        create(&pods, json!({"metadata": {"name": "lonely"}, "spec": {}, "status": {"podIP": "10.42.1.6"}}))
            .await
            .unwrap();
        objects
    }

    fn a(n: &str, ip: &str) -> Rec {
        Rec::A(n.into(), ip.parse().unwrap())
    }

    #[tokio::test]
    async fn cluster_ip_service_has_one_a_record() {
        let z = Zone::new(seeded().await);
        let n = "svc-node.default.svc.cluster.local";
        assert_eq!(z.answer(n, Qtype::A).await.unwrap(), Answer::Records(vec![a(n, "10.43.0.20")]));
        assert_eq!(z.answer(n, Qtype::Aaaa).await.unwrap(), Answer::Records(vec![]));
    }

    #[tokio::test]
    async fn unknown_cluster_names_do_not_exist_and_others_are_not_ours() {
        let z = Zone::new(seeded().await);
        for n in ["nope.default.svc.cluster.local", "svc-node.default.default.svc.cluster.local", "x.y.cluster.local"] {
            assert_eq!(z.answer(n, Qtype::A).await.unwrap(), Answer::NoSuchName, "{n}");
        }
        assert_eq!(z.answer("example.com", Qtype::A).await.unwrap(), Answer::NotOurs);
        assert_eq!(z.answer("5.5.5.5.in-addr.arpa", Qtype::Ptr).await.unwrap(), Answer::NotOurs);
    }

    #[tokio::test]
    async fn external_name_is_a_cname() {
        let z = Zone::new(seeded().await);
        let n = "external-service.default.svc.cluster.local";
        assert_eq!(
            z.answer(n, Qtype::A).await.unwrap(),
            Answer::Records(vec![Rec::Cname(n.into(), "google.com".into())])
        );
    }

    #[tokio::test]
    async fn headless_service_lists_ready_endpoints_and_their_hostnames() {
        let z = Zone::new(seeded().await);
        let n = "web.default.svc.cluster.local";
        assert_eq!(z.answer(n, Qtype::A).await.unwrap(), Answer::Records(vec![a(n, "10.42.1.5"), a(n, "10.42.2.7")]));
        let h = "web-1.web.default.svc.cluster.local";
        assert_eq!(z.answer(h, Qtype::A).await.unwrap(), Answer::Records(vec![a(h, "10.42.2.7")]));
        let gone = "web-2.web.default.svc.cluster.local";
        assert_eq!(z.answer(gone, Qtype::A).await.unwrap(), Answer::NoSuchName);
    }

    #[tokio::test]
    async fn named_ports_have_srv_records() {
        let z = Zone::new(seeded().await);
        let n = "_http._tcp.svc-node.default.svc.cluster.local";
        let Answer::Records(rs) = z.answer(n, Qtype::Srv).await.unwrap() else { panic!("no records") };
        assert_eq!(
            rs,
            vec![Rec::Srv { name: n.into(), port: 80, target: "svc-node.default.svc.cluster.local".into() }]
        );
        let h = "_http._tcp.web.default.svc.cluster.local";
        let Answer::Records(rs) = z.answer(h, Qtype::Srv).await.unwrap() else { panic!("no records") };
        assert_eq!(rs.len(), 2);
        assert!(rs.contains(&Rec::Srv {
            name: h.into(),
            port: 80,
            target: "web-0.web.default.svc.cluster.local".into()
        }));
        assert_eq!(
            z.answer("_grpc._tcp.svc-node.default.svc.cluster.local", Qtype::Srv).await.unwrap(),
            Answer::NoSuchName
        );
    }

    #[tokio::test]
    async fn reverse_lookups_name_services_and_pods() {
        let z = Zone::new(seeded().await);
        let ptr = |n: &str, t: &str| Answer::Records(vec![Rec::Ptr(n.into(), t.into())]);
        let n = "20.0.43.10.in-addr.arpa";
        assert_eq!(z.answer(n, Qtype::Ptr).await.unwrap(), ptr(n, "svc-node.default.svc.cluster.local"));
        let n = "5.1.42.10.in-addr.arpa";
        assert_eq!(z.answer(n, Qtype::Ptr).await.unwrap(), ptr(n, "web-0.web.default.svc.cluster.local"));
        let n = "6.1.42.10.in-addr.arpa";
        assert_eq!(z.answer(n, Qtype::Ptr).await.unwrap(), ptr(n, "10-42-1-6.default.pod.cluster.local"));
    }

    #[test]
    fn reverse_names_parse() {
        assert_eq!(reverse_ip("4.3.2.1.in-addr.arpa"), Some("1.2.3.4".parse().unwrap()));
        assert_eq!(reverse_ip("3.2.1.in-addr.arpa"), None);
        let v6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa";
        assert_eq!(reverse_ip(v6), Some("fd00::1".parse().unwrap()));
    }
}
