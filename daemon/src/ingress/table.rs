//! Builds the routing table from the Ingresses this node serves, their Services and
//! EndpointSlices. Bad input in one Ingress (an invalid regex, a missing Service, a host and
//! path another Ingress claimed first) becomes a warning and the rest is still served.
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::annotations::{self, Annotations};
use super::matching::{path_regex, Hosts, Location, PathMatch, Server};

/// The IngressClass this node creates.
pub(crate) const CLASS: &str = "shoal";
/// Its `spec.controller`.
pub(crate) const CONTROLLER: &str = "shoal.dev/ingress";
pub(crate) const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// Everything the table is built from.
#[derive(Debug, Default, Clone)]
pub(crate) struct Snapshot {
    pub(crate) ingresses: Vec<Value>,
    pub(crate) classes: Vec<Value>,
    pub(crate) services: Vec<Value>,
    pub(crate) slices: Vec<Value>,
}

/// A problem with one Ingress, reported as a Warning event on it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Warning {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) reason: String,
    pub(crate) message: String,
}

/// How long an endpoint that refused a connection is tried only after the others.
pub(crate) const EJECT_FOR: Duration = Duration::from_secs(10);

/// Milliseconds since the first call (a clock for ejection deadlines).
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// The ready endpoints of one Service port, taken round robin.
#[derive(Debug)]
pub(crate) struct Upstream {
    /// `namespace/service:port`, for messages.
    pub(crate) name: String,
    pub(crate) endpoints: Vec<SocketAddr>,
    next: AtomicUsize,
    /// Per endpoint: until when (`now_ms`) it is ejected; 0: not ejected.
    ejected: Vec<AtomicU64>,
}

impl Upstream {
    pub(crate) fn new(name: String, endpoints: Vec<SocketAddr>) -> Upstream {
        let ejected = endpoints.iter().map(|_| AtomicU64::new(0)).collect();
        Upstream { name, endpoints, next: AtomicUsize::new(0), ejected }
    }

    /// The endpoints in the order to try them for one request: round robin from the next
    /// start, endpoints that refused a connection lately after all the others.
    pub(crate) fn order(&self) -> Vec<SocketAddr> {
        let n = self.endpoints.len();
        let start = if n == 0 { 0 } else { self.next.fetch_add(1, Ordering::Relaxed) % n };
        let now = now_ms();
        let (mut ok, mut out) = (Vec::with_capacity(n), Vec::new());
        for i in 0..n {
            let j = (start + i) % n;
            if self.ejected[j].load(Ordering::Relaxed) > now {
                out.push(self.endpoints[j]);
            } else {
                ok.push(self.endpoints[j]);
            }
        }
        ok.extend(out);
        ok
    }

    /// `ep` refused a connection: try it last for [`EJECT_FOR`].
    pub(crate) fn eject(&self, ep: SocketAddr) {
        if let Some(i) = self.endpoints.iter().position(|e| *e == ep) {
            self.ejected[i].store(now_ms() + EJECT_FOR.as_millis() as u64, Ordering::Relaxed);
        }
    }
}

/// Where a route sends requests.
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    Service(Arc<Upstream>),
    /// Answered with 503 and this reason.
    Missing(String),
}

/// One path of one Ingress.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    /// `namespace/name` of the Ingress.
    pub(crate) ingress: String,
    pub(crate) backend: Backend,
    pub(crate) annotations: Arc<Annotations>,
    /// The same host and path of an Ingress marked `canary` (its annotations say when).
    pub(crate) canary: Option<Arc<Route>>,
}

/// The routing table: what a request is matched against.
#[derive(Debug, Default)]
pub(crate) struct Table {
    pub(crate) hosts: Hosts,
    /// The `spec.defaultBackend` of the oldest Ingress that has one.
    pub(crate) default_backend: Option<Arc<Route>>,
    /// `namespace/name` of every Ingress served (status is written on these).
    pub(crate) served: BTreeSet<(String, String)>,
}

/// Which classes this node answers to.
#[derive(Debug, Clone)]
pub(crate) struct Classes {
    /// Extra class names (config `ingress.classes`).
    pub(crate) extra: Vec<String>,
}

impl Classes {
    /// Whether an Ingress is ours: its class is `shoal`, one of the extra names, or an
    /// IngressClass of our controller; without a class, when `shoal` is the default class.
    pub(crate) fn owns(&self, ing: &Value, classes: &[Value]) -> bool {
        let named = ing["spec"]["ingressClassName"]
            .as_str()
            .or_else(|| ing["metadata"]["annotations"]["kubernetes.io/ingress.class"].as_str());
        match named {
            Some(c) => {
                c == CLASS
                    || self.extra.iter().any(|e| e == c)
                    || classes.iter().any(|k| k["metadata"]["name"] == c && k["spec"]["controller"] == CONTROLLER)
            }
            None => {
                let ours = classes.iter().find(|k| k["metadata"]["name"] == CLASS);
                // Until the class exists it is the default it will be created as.
                ours.is_none_or(|k| k["metadata"]["annotations"][DEFAULT_CLASS_ANNOTATION] == "true")
            }
        }
    }
}

/// The IngressClass created at start.
pub(crate) fn ingress_class() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {
            "name": CLASS,
            "annotations": {DEFAULT_CLASS_ANNOTATION: "true"},
        },
        "spec": {"controller": CONTROLLER},
    })
}

fn meta<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj["metadata"][field].as_str().unwrap_or("")
}

/// Resolves Service ports to ready endpoint addresses.
struct Endpoints<'a> {
    services: HashMap<(&'a str, &'a str), &'a Value>,
    slices: HashMap<(&'a str, &'a str), Vec<&'a Value>>,
    cache: HashMap<String, Arc<Upstream>>,
}

impl<'a> Endpoints<'a> {
    fn new(snap: &'a Snapshot) -> Self {
        let services = snap.services.iter().map(|s| ((meta(s, "namespace"), meta(s, "name")), s)).collect();
        let mut slices: HashMap<(&str, &str), Vec<&Value>> = HashMap::new();
        for s in &snap.slices {
            if let Some(svc) = s["metadata"]["labels"]["kubernetes.io/service-name"].as_str() {
                slices.entry((meta(s, "namespace"), svc)).or_default().push(s);
            }
        }
        Endpoints { services, slices, cache: HashMap::new() }
    }

    /// The backend of `spec.defaultBackend` or of a path.
    fn backend(&mut self, ns: &str, backend: &Value) -> Result<Backend, String> {
        if backend.get("resource").is_some_and(|r| !r.is_null()) {
            return Err("resource backends are not supported; use a service backend".into());
        }
        let svc = &backend["service"];
        let Some(name) = svc["name"].as_str() else { return Err("backend names no service".into()) };
        let port = &svc["port"];
        let Some(service) = self.services.get(&(ns, name)).copied() else {
            return Ok(Backend::Missing(format!("service {ns}/{name} does not exist")));
        };
        let ports = service["spec"]["ports"].as_array().cloned().unwrap_or_default();
        let sp = if let Some(n) = port["number"].as_i64() {
            ports.iter().find(|p| p["port"].as_i64() == Some(n))
        } else if let Some(pn) = port["name"].as_str() {
            ports.iter().find(|p| p["name"].as_str() == Some(pn))
        } else {
            return Err(format!("backend service {name} names no port"));
        };
        let label = port["number"].as_i64().map(|n| n.to_string()).or_else(|| port["name"].as_str().map(String::from));
        let key = format!("{ns}/{name}:{}", label.unwrap_or_default());
        let Some(sp) = sp else {
            return Ok(Backend::Missing(format!(
                "service {ns}/{name} has no port {}",
                key.rsplit(':').next().unwrap_or("")
            )));
        };
        if let Some(u) = self.cache.get(&key) {
            return Ok(Backend::Service(u.clone()));
        }
        let port_name = sp["name"].as_str().unwrap_or("");
        let mut addrs = Vec::new();
        for slice in self.slices.get(&(ns, name)).into_iter().flatten() {
            let Some(target) = slice["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| {
                    p["name"].as_str().unwrap_or("") == port_name && p["protocol"].as_str().unwrap_or("TCP") == "TCP"
                })
                .and_then(|p| p["port"].as_u64())
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            for ep in slice["endpoints"].as_array().into_iter().flatten() {
                // Kubernetes: a missing `ready` means ready.
                if ep["conditions"]["ready"] == false || ep["conditions"]["terminating"] == true {
                    continue;
                }
                for a in ep["addresses"].as_array().into_iter().flatten() {
                    if let Some(ip) = a.as_str().and_then(|s| s.parse::<IpAddr>().ok()) {
                        addrs.push(SocketAddr::new(ip, target));
                    }
                }
            }
        }
        addrs.sort();
        addrs.dedup();
        let u = Arc::new(Upstream::new(key.clone(), addrs));
        self.cache.insert(key, u.clone());
        Ok(Backend::Service(u))
    }
}

/// A path before its host's regex mode is known.
struct Pending {
    host: String,
    path: String,
    exact: bool,
    prefix: bool,
    ingress: (String, String),
    route: Arc<Route>,
}

/// A host as a rule may name it: a DNS name, or `*.` and a name.
fn valid_host(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Builds the table and the warnings about the Ingresses it had to partly ignore.
pub(crate) fn build(snap: &Snapshot, classes: &Classes) -> (Table, Vec<Warning>) {
    let mut warnings = Vec::new();
    let mut table = Table::default();
    let mut eps = Endpoints::new(snap);
    let mut ours: Vec<&Value> = snap.ingresses.iter().filter(|i| classes.owns(i, &snap.classes)).collect();
    // The oldest claim wins, as in ingress-nginx.
    ours.sort_by(|a, b| {
        (meta(a, "creationTimestamp"), meta(a, "namespace"), meta(a, "name")).cmp(&(
            meta(b, "creationTimestamp"),
            meta(b, "namespace"),
            meta(b, "name"),
        ))
    });
    let mut pending: Vec<Pending> = Vec::new();
    // Paths of canary Ingresses: merged into the main Ingress's same host and path.
    let mut canaries: Vec<Pending> = Vec::new();
    let mut regex_hosts: BTreeSet<String> = BTreeSet::new();
    let mut tls_hosts: BTreeSet<String> = BTreeSet::new();
    for ing in ours {
        let (ns, name) = (meta(ing, "namespace").to_string(), meta(ing, "name").to_string());
        if ing["metadata"]["deletionTimestamp"].is_string() {
            continue;
        }
        let mut warn = |reason: &str, message: String| {
            warnings.push(Warning { namespace: ns.clone(), name: name.clone(), reason: reason.into(), message })
        };
        let ann = Arc::new(annotations::parse(ing, &mut warn));
        table.served.insert((ns.clone(), name.clone()));
        for t in ing["spec"]["tls"].as_array().into_iter().flatten() {
            for h in t["hosts"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                tls_hosts.insert(h.to_ascii_lowercase());
            }
        }
        let is_canary = ann.canary.is_some();
        let route = |backend: Backend| {
            Arc::new(Route { ingress: format!("{ns}/{name}"), backend, annotations: ann.clone(), canary: None })
        };
        let db = &ing["spec"]["defaultBackend"];
        if db.is_object() && !is_canary {
            match eps.backend(&ns, db) {
                Ok(b) => {
                    if let Backend::Missing(why) = &b {
                        warn("MissingBackend", format!("defaultBackend: {why}"));
                    }
                    match &table.default_backend {
                        None => table.default_backend = Some(route(b)),
                        Some(r) => warn(
                            "ConflictingDefaultBackend",
                            format!("defaultBackend ignored: ingress {} set the default backend first", r.ingress),
                        ),
                    }
                }
                Err(why) => warn("InvalidBackend", format!("defaultBackend: {why}")),
            }
        }
        for rule in ing["spec"]["rules"].as_array().into_iter().flatten() {
            let host = rule["host"].as_str().unwrap_or("").to_ascii_lowercase();
            if !host.is_empty() && !valid_host(&host) {
                warn("InvalidHost", format!("host {host:?} is not a DNS name or a `*.` wildcard; rule ignored"));
                continue;
            }
            for p in rule["http"]["paths"].as_array().into_iter().flatten() {
                let path = p["path"].as_str().unwrap_or("/").to_string();
                let path = if path.is_empty() { "/".to_string() } else { path };
                let ty = p["pathType"].as_str().unwrap_or("ImplementationSpecific");
                let b = match eps.backend(&ns, &p["backend"]) {
                    Ok(b) => b,
                    Err(why) => {
                        warn("InvalidBackend", format!("path {path}: {why}; path ignored"));
                        continue;
                    }
                };
                if let Backend::Missing(why) = &b {
                    warn("MissingBackend", format!("path {path}: {why}; answered with 503"));
                }
                let (exact, prefix) = match ty {
                    "Exact" => (true, false),
                    "Prefix" => (false, true),
                    "ImplementationSpecific" => (false, false),
                    other => {
                        warn("InvalidPath", format!("path {path}: pathType {other:?} is not known; path ignored"));
                        continue;
                    }
                };
                if (ann.use_regex || ann.rewrite_target.is_some()) && !is_canary {
                    regex_hosts.insert(host.clone());
                }
                let list = if is_canary { &mut canaries } else { &mut pending };
                list.push(Pending {
                    host: host.clone(),
                    path,
                    exact,
                    prefix,
                    ingress: (ns.clone(), name.clone()),
                    route: route(b),
                });
            }
        }
    }
    // A claim per (host, exact?, path): the first (oldest Ingress) wins.
    let mut claimed: HashMap<(String, bool, String), String> = HashMap::new();
    for p in pending {
        let regex = regex_hosts.contains(&p.host);
        let key = (p.host.clone(), p.exact, p.path.clone());
        if let Some(owner) = claimed.get(&key) {
            if *owner != p.route.ingress {
                let host = if p.host.is_empty() { "*" } else { &p.host };
                warnings.push(Warning {
                    namespace: p.ingress.0,
                    name: p.ingress.1,
                    reason: "ConflictingPath".into(),
                    message: format!("host {host} path {}: already served by ingress {owner}; path ignored", p.path),
                });
            }
            continue;
        }
        let matcher = if p.exact {
            PathMatch::Exact(p.path.clone())
        } else if regex {
            match path_regex(&p.path) {
                Ok(r) => PathMatch::Regex(r),
                Err(e) => {
                    let first = e.to_string().lines().last().unwrap_or("").trim().to_string();
                    warnings.push(Warning {
                        namespace: p.ingress.0,
                        name: p.ingress.1,
                        reason: "InvalidPath".into(),
                        message: format!("path {:?} is not a valid regular expression ({first}); path ignored", p.path),
                    });
                    continue;
                }
            }
        } else if !p.path.starts_with('/') {
            warnings.push(Warning {
                namespace: p.ingress.0,
                name: p.ingress.1,
                reason: "InvalidPath".into(),
                message: format!("path {:?} must start with /; path ignored", p.path),
            });
            continue;
        } else if p.prefix {
            PathMatch::Prefix(p.path.clone())
        } else {
            PathMatch::StringPrefix(p.path.clone())
        };
        claimed.insert(key, p.route.ingress.clone());
        let server = server_mut(&mut table.hosts, &p.host);
        let loc = Location { path: p.path, matcher, route: p.route };
        match &loc.matcher {
            PathMatch::Exact(_) => server.exact.push(loc),
            PathMatch::Regex(_) => server.regex.push(loc),
            _ => server.prefix.push(loc),
        }
    }
    for c in canaries {
        let server = server_mut(&mut table.hosts, &c.host);
        let main = server
            .exact
            .iter_mut()
            .chain(server.regex.iter_mut())
            .chain(server.prefix.iter_mut())
            .find(|l| l.path == c.path && matches!(l.matcher, PathMatch::Exact(_)) == c.exact);
        match main {
            Some(loc) if loc.route.canary.is_none() => {
                let mut merged = Route::clone(&loc.route);
                merged.canary = Some(c.route);
                loc.route = Arc::new(merged);
            }
            Some(loc) => warnings.push(Warning {
                namespace: c.ingress.0,
                name: c.ingress.1,
                reason: "ConflictingPath".into(),
                message: format!(
                    "canary for path {}: ingress {} already has a canary; ignored",
                    c.path, loc.route.ingress
                ),
            }),
            None => {
                let host = if c.host.is_empty() { "*" } else { &c.host };
                warnings.push(Warning {
                    namespace: c.ingress.0,
                    name: c.ingress.1,
                    reason: "CanaryWithoutMain".into(),
                    message: format!(
                        "canary path {} of host {host}: no other ingress serves this host and path; ignored",
                        c.path
                    ),
                })
            }
        }
    }
    for h in &tls_hosts {
        server_mut(&mut table.hosts, h).tls = true;
    }
    table.hosts.any.order_regex();
    for s in table.hosts.exact.values_mut().chain(table.hosts.wildcard.values_mut()) {
        s.order_regex();
    }
    warnings.sort();
    warnings.dedup();
    (table, warnings)
}

fn server_mut<'a>(hosts: &'a mut Hosts, host: &str) -> &'a mut Server {
    if host.is_empty() {
        &mut hosts.any
    } else if let Some(suffix) = host.strip_prefix('*') {
        hosts.wildcard.entry(suffix.to_string()).or_default()
    } else {
        hosts.exact.entry(host.to_string()).or_default()
    }
}
