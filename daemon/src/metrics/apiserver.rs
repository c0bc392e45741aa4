//! kube-apiserver's request metrics: `apiserver_request_total`, `apiserver_request_duration_seconds`,
//! `apiserver_current_inflight_requests` and `apiserver_longrunning_requests`, with upstream's
//! labels and buckets. Every request passes [`start`] and [`Pending::finish`].
//!
//! Cardinality stays bounded: labels come from the served resource (never from a name or a
//! namespace), and a request the router could not route (unknown path, unauthenticated) is
//! counted with empty resource labels ([`Unrouted`]).
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Response, Uri};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upstream's buckets of `apiserver_request_duration_seconds`.
pub(crate) const DURATION_BUCKETS: [f64; 23] = [
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0,
    45.0, 60.0,
];

const COMPONENT: &str = "apiserver";

/// Marks a response whose request matched no served path (or was not authenticated): it is
/// counted without resource labels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unrouted;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub verb: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    pub scope: String,
    pub component: String,
    pub code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabels {
    pub verb: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    pub scope: String,
    pub component: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabels {
    pub request_kind: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The request families.
pub(crate) struct ApiMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: HistogramFamily<RouteLabels>,
    pub inflight: Family<KindLabels, Gauge>,
    pub longrunning: Family<RouteLabels, Gauge>,
    /// Connections and requests refused by a cap (`api::limits`), by reason.
    pub refused: Family<ReasonLabels, Counter>,
    /// Time of the authorization decision of each request from outside (RBAC and the Node
    /// authorizer; `system:masters` included).
    pub authz_decision: Histogram,
}

/// Buckets of `shoal_authorization_decision_duration_seconds`: 1 µs to 10 ms.
const AUTHZ_BUCKETS: [f64; 15] =
    [1e-6, 2e-6, 3e-6, 5e-6, 7.5e-6, 1e-5, 1.5e-5, 2e-5, 3e-5, 5e-5, 7.5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2];

/// Records the time of one authorization decision (when metrics are on).
pub(crate) fn observe_authz(took: std::time::Duration) {
    if super::enabled() {
        super::global().api.authz_decision.observe(took.as_secs_f64());
    }
}

impl Default for ApiMetrics {
    fn default() -> Self {
        let inflight = Family::<KindLabels, Gauge>::default();
        // Both kinds are present from the start, as upstream shows them.
        for kind in ["readOnly", "mutating"] {
            let _ = inflight.get_or_create(&KindLabels { request_kind: kind.into() });
        }
        // Every reason is shown from the start, at 0 (`api::limits::Refusal`).
        let refused = Family::<ReasonLabels, Counter>::default();
        for reason in ["connections_per_client", "watches_per_user", "readonly_inflight", "mutating_inflight"] {
            let _ = refused.get_or_create(&ReasonLabels { reason: reason.into() });
        }
        ApiMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            inflight,
            longrunning: Family::default(),
            refused,
            authz_decision: Histogram::new(AUTHZ_BUCKETS),
        }
    }
}

impl ApiMetrics {
    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "apiserver_request",
            "Counter of apiserver requests broken out for each verb, group, version, resource, scope, component, and HTTP response code.",
            self.requests.clone(),
        );
        r.register(
            "apiserver_request_duration_seconds",
            "Response latency distribution in seconds for each verb, group, version, resource, subresource, scope and component.",
            self.duration.clone(),
        );
        r.register(
            "apiserver_current_inflight_requests",
            "Maximal number of currently used inflight request limit of this apiserver per request kind in last second.",
            self.inflight.clone(),
        );
        r.register(
            "apiserver_longrunning_requests",
            "Gauge of all active long-running apiserver requests broken out by verb, group, version, resource, scope and component.",
            self.longrunning.clone(),
        );
        r.register(
            "shoal_api_refused",
            "Connections and requests the API server refused because a cap was reached (connections per client, watches per user, requests in flight).",
            self.refused.clone(),
        );
        r.register(
            "shoal_authorization_decision_duration_seconds",
            "Time of the authorization decision (RBAC, Node authorizer) of each API request from outside.",
            self.authz_decision.clone(),
        );
    }

    /// Counts one refusal by a cap.
    pub(crate) fn refused(&self, reason: &str) {
        self.refused.get_or_create(&ReasonLabels { reason: reason.to_string() }).inc();
    }
}

/// What a request is, in upstream's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestInfo {
    pub verb: &'static str,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    pub scope: &'static str,
    pub long_running: bool,
    pub mutating: bool,
}

fn method_verb(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn query_flag(uri: &Uri, key: &str) -> bool {
    uri.query().is_some_and(|q| {
        q.split('&').any(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            k == key && (v == "true" || v == "1")
        })
    })
}

impl RequestInfo {
    /// Classifies a request from its method, path, query and content type.
    pub(crate) fn of(method: &Method, uri: &Uri, headers: &HeaderMap) -> RequestInfo {
        let segs: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
        let base_verb = method_verb(method);
        let mutating = matches!(base_verb, "POST" | "PUT" | "PATCH" | "DELETE");
        let (group, version, rest) = match segs.as_slice() {
            ["api", v, rest @ ..] if !rest.is_empty() => ("", *v, rest),
            ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
            _ => {
                // A non-resource request: the path (its first segment for the health checks);
                // only GETs are served there, so other methods get no path (no new series).
                let sub = match segs.first().copied() {
                    _ if base_verb != "GET" => String::new(),
                    Some(h @ ("healthz" | "livez" | "readyz")) => format!("/{h}"),
                    _ => uri.path().to_string(),
                };
                return RequestInfo {
                    verb: base_verb,
                    group: String::new(),
                    version: String::new(),
                    resource: String::new(),
                    subresource: sub,
                    scope: "",
                    long_running: false,
                    mutating,
                };
            }
        };
        let (ns, resource, name, sub) = match rest {
            ["namespaces", ns, plural, more @ ..] if !["status", "finalize"].contains(plural) => {
                (Some(*ns), *plural, more.first().copied(), more.get(1).copied())
            }
            [plural, more @ ..] => (None, *plural, more.first().copied(), more.get(1).copied()),
            [] => (None, "", None, None),
        };
        let sub = sub.unwrap_or_default();
        let connect = matches!(sub, "exec" | "attach" | "portforward" | "proxy");
        let verb = if connect {
            "CONNECT"
        } else if base_verb == "GET" && name.is_none() {
            if query_flag(uri, "watch") {
                "WATCH"
            } else {
                "LIST"
            }
        } else if base_verb == "PATCH"
            && headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok())
                == Some("application/apply-patch+yaml")
        {
            "APPLY"
        } else {
            base_verb
        };
        let scope = match (name, ns) {
            (Some(_), _) => "resource",
            (None, Some(_)) => "namespace",
            (None, None) => "cluster",
        };
        let long_running = connect || verb == "WATCH" || (sub == "log" && query_flag(uri, "follow"));
        RequestInfo {
            verb,
            group: group.to_string(),
            version: version.to_string(),
            resource: resource.to_string(),
            subresource: sub.to_string(),
            scope,
            long_running,
            mutating: mutating && !connect,
        }
    }

    /// The same request with the resource labels blanked (it matched nothing served).
    fn unrouted(&self) -> RequestInfo {
        RequestInfo {
            verb: self.verb,
            group: String::new(),
            version: String::new(),
            resource: String::new(),
            subresource: String::new(),
            scope: "",
            long_running: self.long_running,
            mutating: self.mutating,
        }
    }

    fn route_labels(&self) -> RouteLabels {
        RouteLabels {
            verb: self.verb.to_string(),
            group: self.group.clone(),
            version: self.version.clone(),
            resource: self.resource.clone(),
            subresource: self.subresource.clone(),
            scope: self.scope.to_string(),
            component: COMPONENT.to_string(),
        }
    }

    fn request_labels(&self, code: u16) -> RequestLabels {
        let r = self.route_labels();
        RequestLabels {
            verb: r.verb,
            group: r.group,
            version: r.version,
            resource: r.resource,
            subresource: r.subresource,
            scope: r.scope,
            component: r.component,
            code: code.to_string(),
        }
    }
}

/// Decrements a gauge when dropped.
struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A request being served.
pub(crate) struct Pending {
    info: RequestInfo,
    started: Instant,
    _inflight: Option<GaugeGuard>,
}

/// Starts timing a request of the API port, unless metrics are off.
pub(crate) fn begin(
    method: &axum::http::Method,
    uri: &axum::http::Uri,
    headers: &axum::http::HeaderMap,
) -> Option<Pending> {
    super::enabled().then(|| start(RequestInfo::of(method, uri, headers)))
}

/// Records the answer of a request [`begin`] started (nothing when metrics are off).
pub(crate) fn end(pending: Option<Pending>, resp: Response<Body>) -> Response<Body> {
    match pending {
        Some(p) => p.finish(resp),
        None => resp,
    }
}

/// Counts a request in flight (long-running ones are not: they are counted by
/// `apiserver_longrunning_requests` once they are answered).
pub(crate) fn start(info: RequestInfo) -> Pending {
    let inflight = (!info.long_running).then(|| {
        let kind = if info.mutating { "mutating" } else { "readOnly" };
        let g = super::global().api.inflight.get_or_create_owned(&KindLabels { request_kind: kind.into() });
        g.inc();
        GaugeGuard(g)
    });
    Pending { info, started: Instant::now(), _inflight: inflight }
}

impl Pending {
    /// Records the answer; a long-running answer stays counted until its body ends.
    pub(crate) fn finish(self, resp: Response<Body>) -> Response<Body> {
        let m = &super::global().api;
        let info = if resp.extensions().get::<Unrouted>().is_some() { self.info.unrouted() } else { self.info };
        let code = resp.status().as_u16();
        m.requests.get_or_create(&info.request_labels(code)).inc();
        m.duration.get_or_create(&info.route_labels()).observe(self.started.elapsed().as_secs_f64());
        if !(info.long_running && (resp.status().is_success() || code == 101)) {
            return resp;
        }
        let g = m.longrunning.get_or_create_owned(&info.route_labels());
        g.inc();
        let guard = GaugeGuard(g);
        resp.map(move |body| {
            use http_body_util::BodyExt;
            Body::new(body.map_frame(move |f| {
                let _held = &guard;
                f
            }))
        })
    }
}
