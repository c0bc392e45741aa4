use std::net::SocketAddr;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{json, Value};

use super::annotations::{parse_size, Cidr};
use super::matching::{path_regex, prefix_matches, rewrite};
use super::table::{build, Backend, Classes, Snapshot, Table, Warning};

fn classes() -> Classes {
    Classes { extra: vec!["nginx".into()] }
}

fn svc(name: &str, port: i64) -> Value {
    json!({"metadata": {"namespace": "default", "name": name},
           "spec": {"ports": [{"name": "web", "port": port, "targetPort": 8080, "protocol": "TCP"}]}})
}

fn slice(name: &str, ips: &[&str], port: u16) -> Value {
    let eps: Vec<Value> = ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect();
    json!({"metadata": {"namespace": "default", "name": format!("{name}-x"), "labels": {"kubernetes.io/service-name": name}},
           "ports": [{"name": "web", "port": port, "protocol": "TCP"}], "endpoints": eps})
}

fn path(p: &str, ty: &str, svc: &str, port: i64) -> Value {
    json!({"path": p, "pathType": ty, "backend": {"service": {"name": svc, "port": {"number": port}}}})
}

fn ingress(name: &str, created: &str, ann: Value, host: &str, paths: Vec<Value>) -> Value {
    json!({"metadata": {"namespace": "default", "name": name, "creationTimestamp": created, "annotations": ann},
           "spec": {"ingressClassName": "nginx", "rules": [{"host": host, "http": {"paths": paths}}]}})
}

/// The service a request is routed to ("" when none).
fn routed(t: &Table, host: &str, p: &str) -> String {
    let s = t.hosts.server(host);
    match s.find(p).map(|f| f.route.clone()).or_else(|| t.default_backend.clone()) {
        Some(r) => match &r.backend {
            Backend::Service(u) => u.name.split(['/', ':']).nth(1).unwrap_or("").to_string(),
            Backend::Missing(m) => format!("missing: {m}"),
        },
        None => String::new(),
    }
}

fn tour() -> Snapshot {
    let text = include_str!("testdata/tour-ingress.yaml");
    let mut ing: Value = serde_norway::from_str(text).expect("tour manifest parses");
    ing["metadata"]["namespace"] = json!("default");
    ing["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    let names = ["auth", "booking", "payment", "review", "tour", "client"];
    Snapshot {
        ingresses: vec![ing],
        classes: vec![],
        services: names.iter().map(|n| svc(n, 3000)).collect(),
        slices: names.iter().map(|n| slice(n, &["10.42.0.5"], 3000)).collect(),
    }
}

/// The seeds' walkthrough: each path reaches the backend ingress-nginx's ordering chooses
/// (longest regex first, ties by path descending; first match wins).
#[test]
fn tour_paths_follow_ingress_nginx_order() {
    let (t, warnings) = build(&tour(), &classes());
    assert!(warnings.is_empty(), "{warnings:?}");
    let cases = [
        ("/api/v1/auth/login", "auth"),
        ("/api/v1/oauth2/google", "auth"),
        ("/api/v1/users/me", "auth"),
        ("/api/v1/admin/users/42", "auth"),
        ("/api/v1/tours/7/bookings", "booking"),
        ("/api/v1/bookings/3", "booking"),
        ("/api/v1/admin/bookings", "booking"),
        ("/api/v1/payments/checkout", "payment"),
        ("/api/v1/tours/7/reviews", "review"),
        ("/api/v1/reviews", "review"),
        ("/api/v1/admin/reviews/9", "review"),
        ("/api/v1/tours/7", "tour"),
        ("/api/v1/admin/tours", "tour"),
        ("/", "client"),
        ("/about", "client"),
        // Case-insensitive, as nginx `~*`.
        ("/API/V1/REVIEWS", "review"),
    ];
    for (p, want) in cases {
        assert_eq!(routed(&t, "tour.xyz", p), want, "path {p}");
    }
    // Another host: no rule, no default backend.
    assert_eq!(routed(&t, "other.xyz", "/api/v1/reviews"), "");
    // The Host header's port and case do not matter.
    assert_eq!(routed(&t, "TOUR.xyz:80", "/api/v1/payments"), "payment");
}

#[test]
fn regex_order_is_longest_first_then_path_descending() {
    let (t, _) = build(&tour(), &classes());
    let order: Vec<&str> = t.hosts.server("tour.xyz").regex.iter().map(|l| l.path.as_str()).collect();
    // Equal lengths (28): "tours" sorts before "admin" in descending order.
    assert_eq!(order[0], "/api/v1/tours/?(.*)/bookings");
    assert_eq!(order[1], "/api/v1/admin/bookings/?(.*)");
    assert_eq!(order.len(), 14);
    assert_eq!(*order.last().unwrap(), "/?(.*)");
    for w in order.windows(2) {
        assert!(w[0].len() > w[1].len() || (w[0].len() == w[1].len() && w[0] > w[1]), "{order:?}");
    }
}

#[test]
fn prefix_is_element_wise_and_exact_wins() {
    let ing = ingress(
        "a",
        "1",
        json!({}),
        "x.test",
        vec![
            path("/foo", "Prefix", "foo", 80),
            path("/foo/bar", "Prefix", "bar", 80),
            path("/foo", "Exact", "exact", 80),
        ],
    );
    let snap = Snapshot {
        ingresses: vec![ing],
        services: vec![svc("foo", 80), svc("bar", 80), svc("exact", 80)],
        ..Default::default()
    };
    let (t, w) = build(&snap, &classes());
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(routed(&t, "x.test", "/foo"), "exact");
    assert_eq!(routed(&t, "x.test", "/foo/"), "foo");
    assert_eq!(routed(&t, "x.test", "/foo/baz"), "foo");
    assert_eq!(routed(&t, "x.test", "/foo/bar"), "bar");
    assert_eq!(routed(&t, "x.test", "/foo/bar/baz"), "bar");
    assert_eq!(routed(&t, "x.test", "/foo/barbaz"), "foo");
    assert_eq!(routed(&t, "x.test", "/foobar"), "");
}

#[test]
fn wildcard_host_matches_one_label_and_exact_host_wins() {
    let a = ingress("a", "1", json!({}), "*.example.com", vec![path("/", "Prefix", "wild", 80)]);
    let b = ingress("b", "2", json!({}), "api.example.com", vec![path("/", "Prefix", "api", 80)]);
    let c = ingress("c", "3", json!({}), "", vec![path("/", "Prefix", "any", 80)]);
    let snap = Snapshot {
        ingresses: vec![a, b, c],
        services: vec![svc("wild", 80), svc("api", 80), svc("any", 80)],
        ..Default::default()
    };
    let (t, _) = build(&snap, &classes());
    assert_eq!(routed(&t, "api.example.com", "/"), "api");
    assert_eq!(routed(&t, "www.example.com", "/x"), "wild");
    assert_eq!(routed(&t, "a.b.example.com", "/"), "any", "a wildcard covers one label only");
    assert_eq!(routed(&t, "example.com", "/"), "any");
}

#[test]
fn classes_decide_what_is_served() {
    let mut mine = ingress("mine", "1", json!({}), "a.test", vec![path("/", "Prefix", "s", 80)]);
    mine["spec"]["ingressClassName"] = json!("shoal");
    let mut other = ingress("other", "1", json!({}), "b.test", vec![path("/", "Prefix", "s", 80)]);
    other["spec"]["ingressClassName"] = json!("traefik");
    let mut none = ingress("none", "1", json!({}), "c.test", vec![path("/", "Prefix", "s", 80)]);
    none["spec"].as_object_mut().unwrap().remove("ingressClassName");
    let nginx = ingress("nginx", "1", json!({}), "d.test", vec![path("/", "Prefix", "s", 80)]);
    let mut snap =
        Snapshot { ingresses: vec![mine, other, none, nginx], services: vec![svc("s", 80)], ..Default::default() };
    let (t, _) = build(&snap, &classes());
    let served: Vec<&str> = t.served.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(served, ["mine", "nginx", "none"]);
    // `shoal` no longer the default: an Ingress without a class is left alone; nor is `nginx`
    // answered when the config drops it.
    snap.classes =
        vec![json!({"metadata": {"name": "shoal", "annotations": {}}, "spec": {"controller": "shoal.dev/ingress"}})];
    let (t, _) = build(&snap, &Classes { extra: vec![] });
    let served: Vec<&str> = t.served.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(served, ["mine"]);
}

fn reasons(w: &[Warning]) -> Vec<(&str, &str)> {
    w.iter().map(|w| (w.name.as_str(), w.reason.as_str())).collect()
}

#[test]
fn invalid_regex_is_a_warning_and_the_rest_is_served() {
    let ing = ingress(
        "bad",
        "1",
        json!({"nginx.ingress.kubernetes.io/use-regex": "true"}),
        "x.test",
        vec![path("/ok/(.*)", "ImplementationSpecific", "s", 80), path("/broken/(", "ImplementationSpecific", "s", 80)],
    );
    let snap = Snapshot { ingresses: vec![ing], services: vec![svc("s", 80)], ..Default::default() };
    let (t, w) = build(&snap, &classes());
    assert_eq!(reasons(&w), [("bad", "InvalidPath")]);
    assert!(w[0].message.contains("/broken/("), "{}", w[0].message);
    assert_eq!(routed(&t, "x.test", "/ok/1"), "s");
    assert_eq!(routed(&t, "x.test", "/broken/"), "");
}

#[test]
fn missing_service_is_a_warning_and_answers_503() {
    let ing =
        ingress("m", "1", json!({}), "x.test", vec![path("/gone", "Prefix", "gone", 80), path("/", "Prefix", "s", 80)]);
    let snap = Snapshot { ingresses: vec![ing], services: vec![svc("s", 80)], ..Default::default() };
    let (t, w) = build(&snap, &classes());
    assert_eq!(reasons(&w), [("m", "MissingBackend")]);
    assert_eq!(routed(&t, "x.test", "/gone"), "missing: service default/gone does not exist");
    assert_eq!(routed(&t, "x.test", "/other"), "s");
}

#[test]
fn missing_service_port_is_a_warning() {
    let ing = ingress("m", "1", json!({}), "x.test", vec![path("/", "Prefix", "s", 81)]);
    let snap = Snapshot { ingresses: vec![ing], services: vec![svc("s", 80)], ..Default::default() };
    let (_, w) = build(&snap, &classes());
    assert_eq!(reasons(&w), [("m", "MissingBackend")]);
    assert!(w[0].message.contains("no port 81"), "{}", w[0].message);
}

#[test]
fn two_ingresses_claiming_one_host_and_path_oldest_wins() {
    let old = ingress("old", "2026-01-01T00:00:00Z", json!({}), "x.test", vec![path("/app", "Prefix", "a", 80)]);
    let new = ingress(
        "new",
        "2026-02-01T00:00:00Z",
        json!({}),
        "x.test",
        vec![path("/app", "Prefix", "b", 80), path("/other", "Prefix", "b", 80)],
    );
    // Listed newest first: the order of the list does not matter.
    let snap = Snapshot { ingresses: vec![new, old], services: vec![svc("a", 80), svc("b", 80)], ..Default::default() };
    let (t, w) = build(&snap, &classes());
    assert_eq!(reasons(&w), [("new", "ConflictingPath")]);
    assert!(w[0].message.contains("default/old"), "{}", w[0].message);
    assert_eq!(routed(&t, "x.test", "/app"), "a");
    assert_eq!(routed(&t, "x.test", "/other"), "b");
}

#[test]
fn unsupported_and_invalid_annotations_are_warnings() {
    let ing = ingress(
        "a",
        "1",
        json!({
            "nginx.ingress.kubernetes.io/configuration-snippet": "more_set_headers x;",
            "nginx.ingress.kubernetes.io/proxy-body-size": "lots",
            "nginx.ingress.kubernetes.io/whitelist-source-range": "10.0.0.0/8, nonsense",
            "kubernetes.io/other": "x",
        }),
        "x.test",
        vec![path("/", "Prefix", "s", 80)],
    );
    let snap = Snapshot { ingresses: vec![ing], services: vec![svc("s", 80)], ..Default::default() };
    let (t, w) = build(&snap, &classes());
    let mut r: Vec<&str> = w.iter().map(|w| w.reason.as_str()).collect();
    r.sort();
    assert_eq!(r, ["InvalidAnnotation", "InvalidAnnotation", "UnsupportedAnnotation"], "{w:?}");
    let route = t.hosts.server("x.test").find("/").unwrap().route.clone();
    assert_eq!(route.annotations.allow, vec![Cidr::parse("10.0.0.0/8").unwrap()]);
    assert_eq!(route.annotations.body_limit, Some(1 << 20), "an invalid size keeps the default");
}

#[test]
fn resource_backends_and_bad_hosts_are_refused_with_warnings() {
    let mut ing = ingress("r", "1", json!({}), "x.test", vec![path("/", "Prefix", "s", 80)]);
    ing["spec"]["rules"][0]["http"]["paths"]
        .as_array_mut()
        .unwrap()
        .push(json!({"path": "/res", "pathType": "Prefix", "backend": {"resource": {"kind": "Bucket", "name": "b"}}}));
    ing["spec"]["rules"]
        .as_array_mut()
        .unwrap()
        .push(json!({"host": "bad_host!", "http": {"paths": [path("/", "Prefix", "s", 80)]}}));
    let snap = Snapshot { ingresses: vec![ing], services: vec![svc("s", 80)], ..Default::default() };
    let (t, w) = build(&snap, &classes());
    let mut r: Vec<&str> = w.iter().map(|w| w.reason.as_str()).collect();
    r.sort();
    assert_eq!(r, ["InvalidBackend", "InvalidHost"]);
    assert_eq!(routed(&t, "x.test", "/"), "s");
}

#[test]
fn backend_by_port_name_resolves_ready_endpoints_only() {
    let mut ing = ingress("p", "1", json!({}), "x.test", vec![]);
    ing["spec"]["rules"][0]["http"]["paths"] =
        json!([{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "s", "port": {"name": "web"}}}}]);
    let mut sl = slice("s", &["10.42.0.5", "10.42.0.6"], 8080);
    sl["endpoints"][1]["conditions"]["ready"] = json!(false);
    let snap = Snapshot { ingresses: vec![ing], services: vec![svc("s", 80)], slices: vec![sl], ..Default::default() };
    let (t, w) = build(&snap, &classes());
    assert!(w.is_empty(), "{w:?}");
    let route = t.hosts.server("x.test").find("/").unwrap().route.clone();
    let Backend::Service(u) = &route.backend else { panic!("no upstream") };
    assert_eq!(u.endpoints, vec!["10.42.0.5:8080".parse::<SocketAddr>().unwrap()]);
}

#[test]
fn default_backend_catches_the_rest() {
    let mut ing = ingress("d", "1", json!({}), "x.test", vec![path("/a", "Prefix", "a", 80)]);
    ing["spec"]["defaultBackend"] = json!({"service": {"name": "fallback", "port": {"number": 80}}});
    let snap =
        Snapshot { ingresses: vec![ing], services: vec![svc("a", 80), svc("fallback", 80)], ..Default::default() };
    let (t, _) = build(&snap, &classes());
    assert_eq!(routed(&t, "x.test", "/a"), "a");
    assert_eq!(routed(&t, "x.test", "/b"), "fallback");
    assert_eq!(routed(&t, "y.test", "/"), "fallback");
}

#[test]
fn rewrite_target_expands_captures_like_nginx() {
    let re = path_regex("/something(/|$)(.*)").unwrap();
    assert_eq!(rewrite(&re, "/something/new", "/$2"), "/new");
    assert_eq!(rewrite(&re, "/something", "/$2"), "/");
    assert_eq!(rewrite(&re, "/something/a/b", "/x/$2a"), "/x/a/ba");
    assert_eq!(rewrite(&re, "/something/a", "/$9"), "/");
}

#[test]
fn sizes_and_cidrs_parse() {
    assert_eq!(parse_size("8k"), Some(Some(8192)));
    assert_eq!(parse_size("1m"), Some(Some(1 << 20)));
    assert_eq!(parse_size("0"), Some(None));
    assert_eq!(parse_size("lots"), None);
    assert_eq!(parse_size(""), None);
    let c = Cidr::parse("192.168.1.0/24").unwrap();
    assert!(c.contains("192.168.1.77".parse().unwrap()));
    assert!(!c.contains("192.168.2.1".parse().unwrap()));
    assert!(c.contains("::ffff:192.168.1.9".parse().unwrap()));
    assert!(Cidr::parse("10.0.0.0/33").is_none());
    assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Element-wise Prefix: `/a/b` matches exactly the paths whose elements start with a, b.
    #[test]
    fn prefix_matches_element_wise(
        rule in proptest::collection::vec("[a-c]{1,2}", 0..3),
        req in proptest::collection::vec("[a-c]{1,2}", 0..4),
        trailing in any::<bool>(),
    ) {
        let mut r = format!("/{}", rule.join("/"));
        if trailing && !rule.is_empty() { r.push('/'); }
        let p = format!("/{}", req.join("/"));
        let want = req.len() >= rule.len() && req[..rule.len()] == rule[..];
        prop_assert_eq!(prefix_matches(&r, &p), want, "rule {} path {}", r, p);
    }

    /// Whatever the order of the Ingress's paths, the table's regex order is the same and the
    /// first matching regex is the one ingress-nginx's order would pick.
    #[test]
    fn regex_order_does_not_depend_on_input_order(seed in any::<u64>()) {
        let mut snap = tour();
        let paths = snap.ingresses[0]["spec"]["rules"][0]["http"]["paths"].as_array_mut().unwrap();
        let n = paths.len();
        let mut s = seed;
        for i in (1..n).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            paths.swap(i, (s >> 33) as usize % (i + 1));
        }
        let (t, _) = build(&snap, &classes());
        let (t0, _) = build(&tour(), &classes());
        let a: Vec<&str> = t.hosts.server("tour.xyz").regex.iter().map(|l| l.path.as_str()).collect();
        let b: Vec<&str> = t0.hosts.server("tour.xyz").regex.iter().map(|l| l.path.as_str()).collect();
        prop_assert_eq!(a, b);
    }
}

/// A backend answering with its name, the path, X-Forwarded-For, Host and X-Request-ID it got.
async fn backend(name: &'static str) -> SocketAddr {
    use http_body_util::Full;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| async move {
                    let rid = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    let xff =
                        req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    let host = req.headers().get("host").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    let body = format!(
                        "{name} {} {xff} {host} {rid}",
                        req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("")
                    );
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(bytes::Bytes::from(body))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// Starts a router on 127.0.0.1 with `snap`'s table; returns its address.
async fn router(snap: &Snapshot) -> (SocketAddr, Arc<super::proxy::Router>, tokio_util::sync::CancellationToken) {
    let r = super::proxy::Router::new();
    r.set_table(build(snap, &classes()).0);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(r.clone().serve(l, None, stop.clone()));
    (addr, r, stop)
}

/// A raw HTTP/1.1 GET; returns status line code, headers and body.
async fn get(addr: SocketAddr, host: &str, path: &str, extra: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, head.to_ascii_lowercase(), body.to_string())
}

fn snap_with(ep: &[SocketAddr], ann: Value, paths: Vec<Value>) -> Snapshot {
    let eps: Vec<Value> =
        ep.iter().map(|a| json!({"addresses": [a.ip().to_string()], "conditions": {"ready": true}})).collect();
    let port = ep.first().map(|a| a.port()).unwrap_or(1);
    Snapshot {
        ingresses: vec![ingress("i", "1", ann, "x.test", paths)],
        services: vec![svc("s", 80), svc("empty", 80)],
        slices: vec![
            json!({"metadata": {"namespace": "default", "name": "s-1", "labels": {"kubernetes.io/service-name": "s"}},
            "ports": [{"name": "web", "port": port, "protocol": "TCP"}], "endpoints": eps}),
        ],
        ..Default::default()
    }
}

#[tokio::test]
async fn router_forwards_rewrites_and_answers_errors_itself() {
    let b = backend("echo").await;
    let snap = snap_with(
        &[b],
        json!({"nginx.ingress.kubernetes.io/rewrite-target": "/$2"}),
        vec![
            path("/app(/|$)(.*)", "ImplementationSpecific", "s", 80),
            path("/none", "ImplementationSpecific", "empty", 80),
            path("/gone", "ImplementationSpecific", "gone", 80),
        ],
    );
    let (addr, _r, stop) = router(&snap).await;
    let (code, _, body) = get(addr, "x.test", "/app/hello?q=1", "X-Forwarded-For: 1.2.3.4\r\n").await;
    assert_eq!(code, 200, "{body}");
    let (head, rid) = body.rsplit_once(' ').unwrap();
    assert_eq!(head, "echo /hello?q=1 1.2.3.4, 127.0.0.1 x.test");
    assert_eq!(rid.len(), 32, "a generated X-Request-ID: {rid}");
    let (_, _, body) = get(addr, "x.test", "/app/", "X-Request-ID: mine\r\n").await;
    assert!(body.ends_with(" mine"), "a client's X-Request-ID is kept: {body}");
    let (code, _, body) = get(addr, "x.test", "/none", "").await;
    assert_eq!(code, 503);
    assert!(body.contains("default/empty:80 has no ready endpoints"), "{body}");
    let (code, _, body) = get(addr, "x.test", "/gone", "").await;
    assert_eq!(code, 503);
    assert!(body.contains("does not exist"), "{body}");
    let (code, _, _) = get(addr, "y.test", "/app/x", "").await;
    assert_eq!(code, 404);
    stop.cancel();
}

#[tokio::test]
async fn a_refused_endpoint_is_skipped_and_all_refused_is_502() {
    let b = backend("live").await;
    // A port nothing listens on, on another loopback address (same port as the live one).
    let dead: SocketAddr = format!("127.0.0.2:{}", b.port()).parse().unwrap();
    let snap = snap_with(&[b, dead], json!({}), vec![path("/", "Prefix", "s", 80)]);
    let (addr, r, stop) = router(&snap).await;
    for _ in 0..4 {
        let (code, _, body) = get(addr, "x.test", "/", "").await;
        assert_eq!(code, 200, "{body}");
        assert!(body.starts_with("live"), "{body}");
    }
    // The refused endpoint is now tried last, whatever the round robin says.
    let t = r.table();
    let Backend::Service(u) = &t.hosts.server("x.test").find("/").unwrap().route.backend else { panic!("no upstream") };
    for _ in 0..4 {
        assert_eq!(u.order(), vec![b, dead]);
    }
    r.set_table(build(&snap_with(&[dead], json!({}), vec![path("/", "Prefix", "s", 80)]), &classes()).0);
    let (code, _, body) = get(addr, "x.test", "/", "").await;
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("accepted a connection"), "{body}");
    stop.cancel();
}

#[tokio::test]
async fn redirects_allow_list_and_body_size() {
    let b = backend("echo").await;
    let (addr, r, stop) = router(&snap_with(
        &[b],
        json!({"nginx.ingress.kubernetes.io/force-ssl-redirect": "true"}),
        vec![path("/", "Prefix", "s", 80)],
    ))
    .await;
    let (code, head, _) = get(addr, "x.test:80", "/a?b=1", "").await;
    assert_eq!(code, 308);
    assert!(head.contains("location: https://x.test/a?b=1"), "{head}");
    r.set_table(
        build(
            &snap_with(
                &[b],
                json!({"nginx.ingress.kubernetes.io/app-root": "/app1"}),
                vec![path("/", "Prefix", "s", 80)],
            ),
            &classes(),
        )
        .0,
    );
    let (code, head, _) = get(addr, "x.test", "/", "").await;
    assert_eq!(code, 302);
    assert!(head.contains("location: /app1"), "{head}");
    r.set_table(
        build(
            &snap_with(
                &[b],
                json!({"nginx.ingress.kubernetes.io/permanent-redirect": "https://elsewhere.test/"}),
                vec![path("/", "Prefix", "s", 80)],
            ),
            &classes(),
        )
        .0,
    );
    let (code, head, _) = get(addr, "x.test", "/x", "").await;
    assert_eq!(code, 301);
    assert!(head.contains("location: https://elsewhere.test/"), "{head}");
    r.set_table(
        build(
            &snap_with(
                &[b],
                json!({"nginx.ingress.kubernetes.io/whitelist-source-range": "10.0.0.0/8"}),
                vec![path("/", "Prefix", "s", 80)],
            ),
            &classes(),
        )
        .0,
    );
    let (code, _, _) = get(addr, "x.test", "/", "").await;
    assert_eq!(code, 403, "127.0.0.1 is not in 10.0.0.0/8");
    r.set_table(
        build(
            &snap_with(
                &[b],
                json!({"nginx.ingress.kubernetes.io/proxy-body-size": "8"}),
                vec![path("/", "Prefix", "s", 80)],
            ),
            &classes(),
        )
        .0,
    );
    let (code, _, _) = get(addr, "x.test", "/", "Content-Length: 9\r\n").await;
    assert_eq!(code, 413);
    stop.cancel();
}

/// A CA and a leaf certificate for `host` signed by it, as a kubernetes.io/tls Secret.
fn tls_secret(name: &str, host: &str, issuer: &rcgen::Issuer<'_, rcgen::KeyPair>) -> Value {
    use base64::Engine;
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![host.to_string()]).unwrap().signed_by(&key, issuer).unwrap();
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    json!({"metadata": {"namespace": "default", "name": name}, "type": "kubernetes.io/tls",
           "data": {"tls.crt": b64(cert.pem()), "tls.key": b64(key.serialize_pem())}})
}

fn test_ca() -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    let pem = cert.pem();
    (pem.clone(), rcgen::Issuer::from_ca_cert_pem(&pem, key).unwrap())
}

/// An HTTPS GET with SNI `host`, trusting only `ca_pem`; the status and body, or the error.
async fn https_get(addr: SocketAddr, host: &str, ca_pem: &str) -> Result<(u16, String), String> {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.map_err(|e| e.to_string())?;
    s.write_all(format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

#[tokio::test]
async fn https_picks_the_certificate_by_sni_and_reloads_it() {
    let b = backend("echo").await;
    let (ca_pem, issuer) = test_ca();
    let mut ing = ingress("t", "1", json!({}), "a.test", vec![path("/", "Prefix", "s", 80)]);
    ing["spec"]["rules"]
        .as_array_mut()
        .unwrap()
        .push(json!({"host": "b.test", "http": {"paths": [path("/", "Prefix", "s", 80)]}}));
    ing["spec"]["tls"] = json!([{"hosts": ["a.test"], "secretName": "a"}, {"hosts": ["b.test"], "secretName": "b"}]);
    let mut snap = snap_with(&[b], json!({}), vec![]);
    snap.ingresses = vec![ing.clone()];
    let secrets = vec![tls_secret("a", "a.test", &issuer), tls_secret("b", "b.test", &issuer)];
    let r = super::proxy::Router::new();
    let (table, _) = build(&snap, &classes());
    let plain_redirects = table.hosts.server("a.test").tls;
    r.set_table(table);
    let certs = super::tls::Resolver::new().unwrap();
    let (c, w) = super::tls::certificates(&[&ing], &secrets);
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(c.len(), 2);
    certs.set(c);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(certs.server_config().unwrap()));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(r.clone().serve(l, Some(acceptor), stop.clone()));
    // Each name gets its own certificate (the client checks the name against it).
    for host in ["a.test", "b.test"] {
        let (code, body) = https_get(addr, host, &ca_pem).await.unwrap_or_else(|e| panic!("{host}: {e}"));
        assert_eq!(code, 200, "{body}");
        assert!(body.starts_with("echo /x"), "{body}");
    }
    // A name no Secret covers gets the self-signed default, which the client does not trust.
    let err = https_get(addr, "c.test", &ca_pem).await.unwrap_err();
    assert!(err.contains("certificate"), "{err}");
    assert!(plain_redirects, "a host in spec.tls is redirected from plain HTTP");
    // The Secret changes to a certificate of another CA: the next handshake uses it.
    let (ca2_pem, issuer2) = test_ca();
    let (c, _) = super::tls::certificates(&[&ing], &[tls_secret("a", "a.test", &issuer2)]);
    certs.set(c);
    assert!(https_get(addr, "a.test", &ca2_pem).await.is_ok());
    assert!(https_get(addr, "a.test", &ca_pem).await.is_err());
    stop.cancel();
}

#[test]
fn missing_and_invalid_tls_secrets_are_warnings() {
    let mut ing = ingress("t", "1", json!({}), "a.test", vec![path("/", "Prefix", "s", 80)]);
    ing["spec"]["tls"] =
        json!([{"hosts": ["a.test"], "secretName": "gone"}, {"hosts": ["b.test"], "secretName": "bad"}]);
    let bad = json!({"metadata": {"namespace": "default", "name": "bad"}, "type": "kubernetes.io/tls",
                     "data": {"tls.crt": "bm90IGEgY2VydA==", "tls.key": "bm90IGEga2V5"}});
    let (c, w) = super::tls::certificates(&[&ing], &[bad]);
    assert_eq!(c.len(), 0);
    let mut r: Vec<&str> = w.iter().map(|w| w.reason.as_str()).collect();
    r.sort();
    assert_eq!(r, ["InvalidSecret", "MissingSecret"], "{w:?}");
}

/// A backend answering `<name> <HTTP version>`, over TLS with a self-signed certificate when
/// `tls`; HTTP/1.1 or HTTP/2 (by preface or ALPN).
async fn versioned_backend(name: &'static str, tls: bool) -> SocketAddr {
    use http_body_util::Full;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let acceptor = tls.then(|| {
        let certs = super::tls::Resolver::new().unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(certs.server_config().unwrap()))
    });
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| async move {
                    let te = req.headers().get("te").and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
                    let body = format!("{name} {:?} te={te}", req.version());
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(bytes::Bytes::from(body))))
                });
                let b = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                match acceptor {
                    Some(a) => {
                        if let Ok(s) = a.accept(tcp).await {
                            let _ = b.serve_connection(hyper_util::rt::TokioIo::new(s), svc).await;
                        }
                    }
                    None => {
                        let _ = b.serve_connection(hyper_util::rt::TokioIo::new(tcp), svc).await;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn backend_protocol_speaks_https_and_h2_to_the_backend() {
    let plain = versioned_backend("h2c", false).await;
    let (addr, r, stop) = router(&snap_with(
        &[plain],
        json!({"nginx.ingress.kubernetes.io/backend-protocol": "GRPC"}),
        vec![path("/", "Prefix", "s", 80)],
    ))
    .await;
    let (code, _, body) = get(addr, "x.test", "/", "TE: trailers\r\n").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, "h2c HTTP/2.0 te=trailers", "GRPC: HTTP/2 without TLS, te: trailers kept");
    let (_, _, body) = get(addr, "x.test", "/", "").await;
    assert_eq!(body, "h2c HTTP/2.0 te=-");
    // Without the annotation: HTTP/1.1, and `te` is hop-by-hop.
    r.set_table(build(&snap_with(&[plain], json!({}), vec![path("/", "Prefix", "s", 80)]), &classes()).0);
    let (_, _, body) = get(addr, "x.test", "/", "TE: trailers\r\n").await;
    assert_eq!(body, "h2c HTTP/1.1 te=-");

    let secure = versioned_backend("tls", true).await;
    for (proto, want) in [("HTTPS", "tls HTTP/1.1 te=-"), ("GRPCS", "tls HTTP/2.0 te=-")] {
        r.set_table(
            build(
                &snap_with(
                    &[secure],
                    json!({"nginx.ingress.kubernetes.io/backend-protocol": proto}),
                    vec![path("/", "Prefix", "s", 80)],
                ),
                &classes(),
            )
            .0,
        );
        let (code, _, body) = get(addr, "x.test", "/", "").await;
        assert_eq!((code, body.as_str()), (200, want), "backend-protocol {proto}");
    }
    // Plain HTTP to a TLS backend is a 502 with the reason, not a hang or a crash.
    r.set_table(build(&snap_with(&[secure], json!({}), vec![path("/", "Prefix", "s", 80)]), &classes()).0);
    let (code, head, body) = get(addr, "x.test", "/", "").await;
    assert_eq!(code, 502, "{body}");
    assert!(head.contains("x-shoal-ingress: 1") && body.contains("failed to answer"), "{body}");
    stop.cancel();
}

/// A WebSocket echo backend (axum), answering each text message with `echo: <message>`.
async fn websocket_backend() -> SocketAddr {
    use axum::extract::ws::{Message, WebSocketUpgrade};
    let app = axum::Router::new().route(
        "/ws",
        axum::routing::get(|ws: WebSocketUpgrade| async move {
            ws.on_upgrade(|mut socket| async move {
                while let Some(Ok(msg)) = socket.recv().await {
                    if let Message::Text(t) = msg {
                        if socket.send(Message::Text(format!("echo: {}", t.as_str()).into())).await.is_err() {
                            return;
                        }
                    }
                }
            })
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    addr
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled_to_the_backend() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let b = websocket_backend().await;
    let (addr, _r, stop) = router(&snap_with(&[b], json!({}), vec![path("/", "Prefix", "s", 80)])).await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://x.test/ws", tcp).await.expect("websocket handshake");
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        ws.send(Message::Text(format!("hello {i}").into())).await.unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(got.into_text().unwrap().as_str(), format!("echo: hello {i}"));
    }
    ws.close(None).await.unwrap();
    // `Upgrade` without `Connection: upgrade` is an ordinary request (no tunnel is opened).
    let (code, head, _) = get(
        addr,
        "x.test",
        "/ws",
        "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    )
    .await;
    assert_ne!(code, 101, "{head}");
    stop.cancel();
}

#[tokio::test]
async fn affinity_cookie_pins_a_client_to_one_endpoint() {
    let a = backend("a").await;
    // A second endpoint on another loopback address, same port layout as the test Service.
    let b2: SocketAddr = format!("127.0.0.3:{}", a.port()).parse().unwrap();
    let b = {
        use http_body_util::Full;
        let l = tokio::net::TcpListener::bind(b2).await.expect("127.0.0.3 with the same port as 127.0.0.1");
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = l.accept().await else { return };
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req: hyper::Request<hyper::body::Incoming>| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(bytes::Bytes::from("b"))))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        b2
    };
    let (addr, _r, stop) = router(&snap_with(
        &[a, b],
        json!({"nginx.ingress.kubernetes.io/affinity": "cookie", "nginx.ingress.kubernetes.io/session-cookie-name": "route"}),
        vec![path("/app", "Prefix", "s", 80)],
    ))
    .await;
    let (code, head, first) = get(addr, "x.test", "/app", "").await;
    assert_eq!(code, 200);
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("a session cookie is set: {head}"))
        .to_string();
    assert!(cookie.contains("; path=/app") && cookie.contains("httponly"), "{cookie}");
    let pair = cookie.split(';').next().unwrap().to_string();
    let who = |s: &str| s.split(' ').next().unwrap_or("").to_string();
    for _ in 0..6 {
        let (_, head, body) = get(addr, "x.test", "/app", &format!("Cookie: other=1; {pair}\r\n")).await;
        assert_eq!(who(&body), who(&first), "the cookie keeps the endpoint");
        assert!(!head.contains("set-cookie"), "no new cookie while it holds: {head}");
    }
    // A forged cookie naming no endpoint: round robin, and a fresh cookie.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let (_, head, body) = get(addr, "x.test", "/app", "Cookie: route=ffffffffffffffff\r\n").await;
        assert!(head.contains("set-cookie: route="), "{head}");
        seen.insert(who(&body));
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    stop.cancel();
}

#[tokio::test]
async fn canary_by_header_and_weight() {
    let main = backend("main").await;
    let canary = backend("canary").await;
    let snap = |canary_ann: Value| {
        let mut s = snap_with(&[main], json!({}), vec![path("/", "Prefix", "s", 80)]);
        s.services.push(svc("c", 80));
        s.slices.push(
            json!({"metadata": {"namespace": "default", "name": "c-1", "labels": {"kubernetes.io/service-name": "c"}},
            "ports": [{"name": "web", "port": canary.port(), "protocol": "TCP"}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]}),
        );
        s.ingresses.push(ingress("canary", "2", canary_ann, "x.test", vec![path("/", "Prefix", "c", 80)]));
        s
    };
    let by_header = snap(json!({"nginx.ingress.kubernetes.io/canary": "true",
                                "nginx.ingress.kubernetes.io/canary-by-header": "X-Canary"}));
    let (t, w) = build(&by_header, &classes());
    assert!(w.is_empty(), "a canary does not conflict with its main Ingress: {w:?}");
    let (addr, r, stop) = router(&by_header).await;
    r.set_table(t);
    let who = |s: String| s.split(' ').next().unwrap_or("").to_string();
    assert_eq!(who(get(addr, "x.test", "/", "").await.2), "main");
    assert_eq!(who(get(addr, "x.test", "/", "X-Canary: always\r\n").await.2), "canary");
    assert_eq!(who(get(addr, "x.test", "/", "X-Canary: never\r\n").await.2), "main");
    // Weight 100: everything to the canary unless the header says never.
    r.set_table(
        build(
            &snap(json!({"nginx.ingress.kubernetes.io/canary": "true",
                          "nginx.ingress.kubernetes.io/canary-weight": "100",
                          "nginx.ingress.kubernetes.io/canary-by-header": "X-Canary"})),
            &classes(),
        )
        .0,
    );
    for _ in 0..3 {
        assert_eq!(who(get(addr, "x.test", "/", "").await.2), "canary");
    }
    assert_eq!(who(get(addr, "x.test", "/", "X-Canary: never\r\n").await.2), "main");
    // Weight 0 and no header: the main backend only.
    r.set_table(build(&snap(json!({"nginx.ingress.kubernetes.io/canary": "true"})), &classes()).0);
    for _ in 0..3 {
        assert_eq!(who(get(addr, "x.test", "/", "X-Canary: always\r\n").await.2), "main");
    }
    stop.cancel();
    // A canary with no main Ingress on its host and path is not served, and says so.
    let mut lone = snap(json!({"nginx.ingress.kubernetes.io/canary": "true"}));
    lone.ingresses.remove(0);
    let (t, w) = build(&lone, &classes());
    assert_eq!(reasons(&w), [("canary", "CanaryWithoutMain")]);
    assert!(t.hosts.server("x.test").find("/").is_none());
}

#[test]
fn new_annotations_parse_and_bad_values_warn() {
    let ing = |ann: Value| json!({"metadata": {"annotations": ann}});
    let mut w = Vec::new();
    let a = super::annotations::parse(
        &ing(json!({"nginx.ingress.kubernetes.io/backend-protocol": "grpcs",
                    "nginx.ingress.kubernetes.io/affinity": "cookie",
                    "nginx.ingress.kubernetes.io/canary": "true",
                    "nginx.ingress.kubernetes.io/canary-weight": "250"})),
        |r: &str, m: String| w.push((r.to_string(), m)),
    );
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(a.protocol, super::annotations::Protocol::Grpcs);
    assert_eq!(a.affinity_cookie.as_deref(), Some("INGRESSCOOKIE"));
    assert_eq!(a.canary.as_ref().map(|c| c.weight), Some(100), "weight is capped at the total");
    for (k, v) in [
        ("backend-protocol", "FCGI"),
        ("affinity", "ip"),
        ("session-cookie-name", "a b"),
        ("session-cookie-path", "/x;y"),
        ("canary-weight", "-1"),
        ("canary-weight-total", "0"),
    ] {
        let mut w = Vec::new();
        let a = super::annotations::parse(
            &ing(json!({format!("nginx.ingress.kubernetes.io/{k}"): v})),
            |r: &str, m: String| w.push((r.to_string(), m)),
        );
        assert_eq!(w.len(), 1, "{k}: {w:?}");
        assert_eq!(w[0].0, "InvalidAnnotation", "{k}");
        assert_eq!(a, super::annotations::Annotations::default(), "{k}: the default is kept");
    }
}
