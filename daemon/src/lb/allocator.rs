//! LoadBalancer IP allocation, on the leader: every Service of type LoadBalancer (of our
//! class) gets an IP from a pool in `status.loadBalancer.ingress`; IPs are released when the
//! Service goes or stops being a LoadBalancer.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use serde_json::{json, Value};
use shoal_kube::{Objects, Resource, UpdateMode};
use tokio_util::sync::CancellationToken;

use super::pool::{self, Pool};
use super::{core, ipaddresspools, LbError};
use crate::reconcile::events::Recorder;

const RESYNC: Duration = Duration::from_secs(2);
const COMPONENT: &str = "shoal-lb-controller";

/// One Service as allocation sees it.
#[derive(Debug, Clone)]
pub(crate) struct Svc {
    pub ns: String,
    pub name: String,
    pub obj: Value,
}

impl Svc {
    fn key(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }
}

/// Whether a Service is a LoadBalancer this allocator serves (no class, or ours).
pub(crate) fn is_ours(svc: &Value) -> bool {
    svc["spec"]["type"].as_str() == Some("LoadBalancer")
        && svc["spec"]["loadBalancerClass"].as_str().is_none_or(|c| c.is_empty() || c == super::LB_CLASS)
}

fn annotation<'a>(svc: &'a Value, key: &str) -> Option<&'a str> {
    let a = &svc["metadata"]["annotations"];
    a[format!("metallb.io/{key}")].as_str().or_else(|| a[format!("metallb.universe.tf/{key}")].as_str())
}

/// The ingress IPs a Service holds now.
pub(crate) fn ingress_ips(svc: &Value) -> Vec<IpAddr> {
    svc["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["ip"].as_str()?.parse().ok())
        .collect()
}

/// The IPs a Service asks for by annotation or `spec.loadBalancerIP`.
fn requested(svc: &Value) -> Result<Vec<IpAddr>, String> {
    let list = annotation(svc, "loadBalancerIPs")
        .map(String::from)
        .or_else(|| svc["spec"]["loadBalancerIP"].as_str().filter(|s| !s.is_empty()).map(String::from));
    let Some(list) = list else { return Ok(Vec::new()) };
    list.split(',').map(|s| s.trim().parse::<IpAddr>().map_err(|_| format!("invalid requested IP {s:?}"))).collect()
}

fn ports(svc: &Value) -> HashSet<(String, i64)> {
    svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| (p["protocol"].as_str().unwrap_or("TCP").to_string(), p["port"].as_i64().unwrap_or(0)))
        .collect()
}

/// Whether `a` may share an IP with `b`: same sharing key, no common port, and both
/// externalTrafficPolicy Cluster or the same selector.
fn can_share(a: &Value, b: &Value) -> bool {
    let (Some(ka), Some(kb)) = (annotation(a, "allow-shared-ip"), annotation(b, "allow-shared-ip")) else {
        return false;
    };
    let local = |s: &Value| s["spec"]["externalTrafficPolicy"].as_str() == Some("Local");
    ka == kb
        && ports(a).is_disjoint(&ports(b))
        && ((!local(a) && !local(b)) || a["spec"]["selector"] == b["spec"]["selector"])
}

/// The decision for one Service.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    Keep,
    Assign(Vec<IpAddr>),
    Fail(String),
}

/// Picks the IPs of `svc` given the pools and the IPs others hold.
pub(crate) fn decide(
    svc: &Svc,
    pools: &[Pool],
    held: &HashMap<IpAddr, Vec<Svc>>,
    ns_labels: &BTreeMap<String, String>,
) -> Decision {
    let free_for = |ip: IpAddr| {
        held.get(&ip).is_none_or(|others| others.iter().all(|o| o.key() == svc.key() || can_share(&svc.obj, &o.obj)))
    };
    let named_pool = annotation(&svc.obj, "address-pool");
    let usable = |p: &&Pool| match named_pool {
        Some(n) => p.name == n,
        None => p.auto_assign && p.admits(&svc.obj, ns_labels),
    };
    let want = match requested(&svc.obj) {
        Ok(w) => w,
        Err(e) => return Decision::Fail(e),
    };
    let current = ingress_ips(&svc.obj);
    if !want.is_empty() {
        let mut want_sorted = want.clone();
        want_sorted.sort();
        let mut cur_sorted = current.clone();
        cur_sorted.sort();
        if want_sorted == cur_sorted && current.iter().all(|ip| free_for(*ip)) {
            return Decision::Keep;
        }
        for ip in &want {
            let in_pool = pools.iter().any(|p| p.contains(*ip) && named_pool.is_none_or(|n| p.name == n));
            if !in_pool {
                return Decision::Fail(format!("requested IP {ip} is not in any address pool"));
            }
            if !free_for(*ip) {
                return Decision::Fail(format!("requested IP {ip} is already in use"));
            }
        }
        return Decision::Assign(want);
    }
    if !current.is_empty()
        && current.iter().all(|ip| free_for(*ip) && pools.iter().filter(usable).any(|p| p.contains(*ip)))
    {
        return Decision::Keep;
    }
    let families: Vec<bool> = {
        let fams: Vec<bool> = svc.obj["spec"]["ipFamilies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str().map(|f| f == "IPv6"))
            .collect();
        let dual = svc.obj["spec"]["ipFamilyPolicy"].as_str() == Some("RequireDualStack");
        match (fams.first(), dual) {
            (None, _) => vec![false],
            (Some(f), false) => vec![*f],
            (Some(_), true) => fams,
        }
    };
    let mut out = Vec::new();
    for v6 in families {
        let mut candidates: Vec<&Pool> = pools.iter().filter(usable).collect();
        // A Service sharing an IP prefers the IP its partners already hold.
        let shared = held
            .iter()
            .filter(|(ip, others)| ip.is_ipv6() == v6 && others.iter().any(|o| o.key() != svc.key()) && free_for(**ip))
            .map(|(ip, _)| *ip)
            .find(|ip| candidates.iter().any(|p| p.contains(*ip)));
        if let Some(ip) = shared {
            out.push(ip);
            continue;
        }
        candidates.retain(|p| p.ranges.iter().any(|r| r.first.is_ipv6() == v6));
        let found = candidates.iter().find_map(|p| p.first_free(v6, &|ip| !held.contains_key(&ip)));
        match found {
            Some(ip) => out.push(ip),
            None => {
                let what = match named_pool {
                    Some(n) => format!("no available IPs in pool {n:?}"),
                    None => "no available IPs".to_string(),
                };
                return Decision::Fail(what);
            }
        }
    }
    Decision::Assign(out)
}

/// The leader's allocator of LoadBalancer IPs.
pub struct LbAllocator {
    objects: Objects,
    default_pool: Vec<String>,
    services: Resource,
    namespaces: Resource,
    pools: Resource,
    recorder: Recorder,
    /// Failures already reported, by Service uid, so a resync does not write again.
    reported: HashMap<String, String>,
}

impl LbAllocator {
    /// `default_pool`: the node config's addresses (CIDRs, `a-b` ranges or single IPs).
    pub fn new(objects: Objects, default_pool: Vec<String>) -> Self {
        let recorder = Recorder::new(objects.clone(), core("events"));
        LbAllocator {
            objects,
            default_pool,
            services: core("services"),
            namespaces: Resource { namespaced: false, ..core("namespaces") },
            pools: ipaddresspools(),
            recorder,
            reported: HashMap::new(),
        }
    }

    /// Allocates until `shutdown`: on every Service or pool change and every few seconds.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), LbError> {
        let default = Pool::default_pool(&self.default_pool)?;
        let mut svc_watch = self.objects.watch(&self.services, None, None).await.map_err(LbError::read)?;
        let mut tick = tokio::time::interval(RESYNC);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                ev = svc_watch.recv() => {
                    if ev.is_none() {
                        svc_watch = self.objects.watch(&self.services, None, None).await.map_err(LbError::read)?;
                    }
                    // Coalesce a burst of changes into one pass.
                    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(20), svc_watch.recv()).await {}
                }
                _ = tick.tick() => {}
            }
            if let Err(error) = self.reconcile(default.as_ref()).await {
                tracing::warn!(%error, "loadbalancer allocation failed");
            }
        }
    }

    /// One pass over every Service.
    pub(crate) async fn reconcile(&mut self, default: Option<&Pool>) -> Result<(), LbError> {
        let (pool_objs, _) = self.objects.list(&self.pools, None).await.map_err(LbError::read)?;
        let mut pools: Vec<Pool> = pool_objs.iter().filter_map(Pool::from_object).collect();
        pool::ordered(&mut pools);
        pools.extend(default.cloned());
        let (svc_objs, _) = self.objects.list(&self.services, None).await.map_err(LbError::read)?;
        let svcs: Vec<Svc> = svc_objs
            .into_iter()
            .filter_map(|obj| {
                let ns = obj["metadata"]["namespace"].as_str()?.to_string();
                let name = obj["metadata"]["name"].as_str()?.to_string();
                Some(Svc { ns, name, obj })
            })
            .collect();
        let mut held: HashMap<IpAddr, Vec<Svc>> = HashMap::new();
        for s in svcs.iter().filter(|s| is_ours(&s.obj)) {
            for ip in ingress_ips(&s.obj) {
                held.entry(ip).or_default().push(s.clone());
            }
        }
        for s in &svcs {
            if !is_ours(&s.obj) {
                if s.obj["spec"]["type"].as_str() != Some("LoadBalancer") && !ingress_ips(&s.obj).is_empty() {
                    self.write(s, &[]).await?;
                }
                continue;
            }
            let ns_labels = match self.objects.get(&self.namespaces, None, &s.ns).await {
                Ok(Some(n)) => pool::labels(&n),
                _ => BTreeMap::new(),
            };
            // Decide against the others' IPs, not this Service's own.
            let mine = ingress_ips(&s.obj);
            for ip in &mine {
                if let Some(v) = held.get_mut(ip) {
                    v.retain(|o| o.key() != s.key());
                    if v.is_empty() {
                        held.remove(ip);
                    }
                }
            }
            let uid = s.obj["metadata"]["uid"].as_str().unwrap_or("").to_string();
            match decide(s, &pools, &held, &ns_labels) {
                Decision::Keep => {
                    self.reported.remove(&uid);
                    for ip in mine {
                        held.entry(ip).or_default().push(s.clone());
                    }
                }
                Decision::Assign(ips) => {
                    self.reported.remove(&uid);
                    self.write(s, &ips).await?;
                    let shown: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
                    self.recorder.normal(COMPONENT, &s.obj, "IPAllocated", &format!("Assigned IP {:?}", shown)).await;
                    let mut updated = s.clone();
                    updated.obj["status"]["loadBalancer"]["ingress"] =
                        json!(ips.iter().map(|i| json!({"ip": i.to_string()})).collect::<Vec<_>>());
                    for ip in ips {
                        held.entry(ip).or_default().push(updated.clone());
                    }
                }
                Decision::Fail(why) => {
                    if !mine.is_empty() {
                        self.write(s, &[]).await?;
                    }
                    if self.reported.get(&uid) != Some(&why) {
                        tracing::info!(service = %s.key(), reason = %why, "no loadbalancer ip");
                        self.recorder
                            .warning(
                                COMPONENT,
                                &s.obj,
                                "AllocationFailed",
                                &format!("Failed to allocate IP for {:?}: {why}", s.key()),
                            )
                            .await;
                        self.reported.insert(uid, why);
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes the ingress list of a Service through its status subresource.
    async fn write(&self, s: &Svc, ips: &[IpAddr]) -> Result<(), LbError> {
        let ingress: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip.to_string(), "ipMode": "VIP"})).collect();
        let res = self
            .objects
            .modify(&self.services, Some(&s.ns), &s.name, UpdateMode::Status, |obj| {
                if obj["status"]["loadBalancer"]["ingress"] == json!(ingress)
                    || (ingress.is_empty() && ingress_ips(obj).is_empty())
                {
                    return Ok(false);
                }
                if !obj["status"].is_object() {
                    obj["status"] = json!({});
                }
                obj["status"]["loadBalancer"] =
                    if ingress.is_empty() { json!({}) } else { json!({"ingress": ingress}) };
                Ok(true)
            })
            .await;
        match res {
            Ok(_) | Err(shoal_kube::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(LbError::WriteStatus { service: s.key(), source: Box::new(e) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_store::Store;

    fn svc(name: &str, extra: Value) -> Svc {
        let mut obj = json!({"metadata": {"name": name, "namespace": "default", "uid": name}, "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}});
        json_patch::merge(&mut obj, &extra);
        Svc { ns: "default".into(), name: name.into(), obj }
    }

    fn pools() -> Vec<Pool> {
        vec![Pool::default_pool(&["10.77.0.240-10.77.0.241".into()]).unwrap().unwrap()]
    }

    #[test]
    fn first_free_address_then_exhaustion() {
        let mut held = HashMap::new();
        let a = svc("a", json!({}));
        assert_eq!(
            decide(&a, &pools(), &held, &BTreeMap::new()),
            Decision::Assign(vec!["10.77.0.240".parse().unwrap()])
        );
        held.insert("10.77.0.240".parse().unwrap(), vec![a]);
        held.insert("10.77.0.241".parse().unwrap(), vec![svc("b", json!({}))]);
        assert_eq!(
            decide(&svc("c", json!({})), &pools(), &held, &BTreeMap::new()),
            Decision::Fail("no available IPs".into())
        );
    }

    #[test]
    fn requested_ips_must_be_in_a_pool_and_free() {
        let held = HashMap::new();
        let want = svc("a", json!({"metadata": {"annotations": {"metallb.io/loadBalancerIPs": "10.77.0.241"}}}));
        assert_eq!(
            decide(&want, &pools(), &held, &BTreeMap::new()),
            Decision::Assign(vec!["10.77.0.241".parse().unwrap()])
        );
        let outside = svc("b", json!({"spec": {"loadBalancerIP": "10.1.1.1"}}));
        assert!(matches!(decide(&outside, &pools(), &held, &BTreeMap::new()), Decision::Fail(_)));
    }

    #[test]
    fn sharing_key_lets_services_with_other_ports_share() {
        let share = json!({"metadata": {"annotations": {"metallb.io/allow-shared-ip": "k"}}});
        let a = svc("a", share.clone());
        let mut held = HashMap::new();
        held.insert("10.77.0.240".parse().unwrap(), vec![a]);
        let mut b = svc("b", share.clone());
        b.obj["spec"]["ports"] = json!([{"port": 443, "protocol": "TCP"}]);
        assert_eq!(
            decide(&b, &pools(), &held, &BTreeMap::new()),
            Decision::Assign(vec!["10.77.0.240".parse().unwrap()])
        );
        let same_port = svc("c", share);
        assert_eq!(
            decide(&same_port, &pools(), &held, &BTreeMap::new()),
            Decision::Assign(vec!["10.77.0.241".parse().unwrap()])
        );
    }

    #[test]
    fn other_classes_are_not_ours() {
        assert!(is_ours(&svc("a", json!({})).obj));
        assert!(!is_ours(&svc("a", json!({"spec": {"loadBalancerClass": "example.com/other"}})).obj));
    }

    #[tokio::test]
    async fn allocator_writes_status_releases_and_reports_exhaustion() {
        let objects = Objects::new(Store::in_memory());
        let svcs = core("services");
        let mut a = LbAllocator::new(objects.clone(), vec!["10.77.0.240/32".into()]);
        let default = Pool::default_pool(&a.default_pool).unwrap();
        objects.create(&svcs, Some("default"), svc("one", json!({})).obj).await.unwrap();
        objects.create(&svcs, Some("default"), svc("two", json!({})).obj).await.unwrap();
        a.reconcile(default.as_ref()).await.unwrap();
        let one = objects.must_get(&svcs, Some("default"), "one").await.unwrap();
        assert_eq!(one["status"]["loadBalancer"]["ingress"], json!([{"ip": "10.77.0.240", "ipMode": "VIP"}]));
        let (events, _) = objects.list(&core("events"), Some("default")).await.unwrap();
        assert!(events.iter().any(|e| e["reason"] == "AllocationFailed" && e["involvedObject"]["name"] == "two"));

        objects
            .modify(&svcs, Some("default"), "one", UpdateMode::Spec, |s| {
                s["spec"]["type"] = json!("ClusterIP");
                Ok(true)
            })
            .await
            .unwrap();
        a.reconcile(default.as_ref()).await.unwrap();
        a.reconcile(default.as_ref()).await.unwrap();
        let one = objects.must_get(&svcs, Some("default"), "one").await.unwrap();
        assert!(ingress_ips(&one).is_empty());
        let two = objects.must_get(&svcs, Some("default"), "two").await.unwrap();
        assert_eq!(ingress_ips(&two), vec!["10.77.0.240".parse::<IpAddr>().unwrap()]);
    }
}
