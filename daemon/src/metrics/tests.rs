use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use super::apiserver::{self, RequestInfo, Unrouted};
use super::*;

fn info(method: Method, uri: &str) -> RequestInfo {
    RequestInfo::of(&method, &uri.parse::<Uri>().unwrap(), &HeaderMap::new())
}

fn answered(method: Method, uri: &str, code: u16, unrouted: bool) {
    let pending = apiserver::start(info(method, uri));
    let mut resp = Response::builder().status(code).body(Body::empty()).unwrap();
    if unrouted {
        resp.extensions_mut().insert(Unrouted);
    }
    drop(pending.finish(resp));
}

/// The line of `text` for `series` (name and labels exactly), as its value.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn requests_are_classified_as_upstream_does() {
    let i = info(Method::GET, "/api/v1/namespaces/default/pods");
    assert_eq!(
        (i.verb, i.group.as_str(), i.version.as_str(), i.resource.as_str(), i.scope),
        ("LIST", "", "v1", "pods", "namespace")
    );
    let i = info(Method::GET, "/apis/apps/v1/deployments?watch=true&resourceVersion=5");
    assert_eq!((i.verb, i.group.as_str(), i.scope, i.long_running), ("WATCH", "apps", "cluster", true));
    let i = info(Method::GET, "/api/v1/nodes/n1");
    assert_eq!((i.verb, i.scope, i.long_running), ("GET", "resource", false));
    let i = info(Method::POST, "/api/v1/namespaces/d/pods/web/exec?command=sh");
    assert_eq!((i.verb, i.subresource.as_str(), i.long_running, i.mutating), ("CONNECT", "exec", true, false));
    let i = info(Method::PUT, "/api/v1/namespaces/d/pods/web/status");
    assert_eq!((i.verb, i.subresource.as_str(), i.mutating), ("PUT", "status", true));
    let i = info(Method::GET, "/api/v1/namespaces/d/pods/web/log?follow=true");
    assert!(i.long_running);
    let i = info(Method::PUT, "/api/v1/namespaces/demo/finalize");
    assert_eq!((i.resource.as_str(), i.subresource.as_str(), i.scope), ("namespaces", "finalize", "resource"));
    let mut h = HeaderMap::new();
    h.insert("content-type", "application/apply-patch+yaml".parse().unwrap());
    let i = RequestInfo::of(&Method::PATCH, &"/api/v1/namespaces/d/configmaps/c".parse().unwrap(), &h);
    assert_eq!(i.verb, "APPLY");
    let i = info(Method::GET, "/healthz/etcd");
    assert_eq!((i.verb, i.subresource.as_str(), i.scope), ("GET", "/healthz", ""));
    let i = info(Method::from_bytes(b"BREW").unwrap(), "/openapi/v3");
    assert_eq!((i.verb, i.subresource.as_str()), ("other", ""), "an unknown method adds no series");
}

#[test]
fn exposition_has_upstream_names_labels_and_buckets() {
    answered(Method::GET, "/apis/example.com/v1/namespaces/x/widgets", 200, false);
    answered(Method::GET, "/apis/example.com/v1/namespaces/x/widgets", 200, false);
    answered(Method::POST, "/apis/example.com/v1/namespaces/x/widgets", 409, false);
    let text = Exporter::default().render();
    let list = r#"apiserver_request_total{verb="LIST",group="example.com",version="v1",resource="widgets",subresource="",scope="namespace",component="apiserver",code="200"}"#;
    assert_eq!(value(&text, list), Some(2.0), "{text}");
    let post = r#"apiserver_request_total{verb="POST",group="example.com",version="v1",resource="widgets",subresource="",scope="namespace",component="apiserver",code="409"}"#;
    assert_eq!(value(&text, post), Some(1.0), "{text}");
    assert!(text.contains("# TYPE apiserver_request_duration_seconds histogram"), "{text}");
    let bucket = r#"apiserver_request_duration_seconds_bucket{le="60.0",verb="LIST",group="example.com",version="v1",resource="widgets",subresource="",scope="namespace",component="apiserver"}"#;
    assert!(text.lines().any(|l| l.starts_with(bucket) || l.contains(r#"le="60.0""#)), "{text}");
    assert!(text.contains(r#"apiserver_current_inflight_requests{request_kind="readOnly"} 0"#), "{text}");
    assert!(text.contains(r#"apiserver_current_inflight_requests{request_kind="mutating"} 0"#), "{text}");
    assert!(text.contains("# TYPE kubelet_pod_start_duration_seconds histogram"), "{text}");
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with EOF");
}

#[test]
fn inflight_and_longrunning_follow_the_request_and_the_body() {
    let series = r#"apiserver_longrunning_requests{verb="WATCH",group="",version="v1",resource="gadgets",subresource="",scope="cluster",component="apiserver"}"#;
    let pending = apiserver::start(info(Method::GET, "/api/v1/gadgets?watch=1"));
    let resp = pending.finish(Response::builder().status(200).body(Body::from("stream")).unwrap());
    assert_eq!(value(&Exporter::default().render(), series), Some(1.0));
    drop(resp);
    assert_eq!(value(&Exporter::default().render(), series), Some(0.0), "the watch ended with its body");

    let inflight = r#"apiserver_current_inflight_requests{request_kind="mutating"}"#;
    let pending = apiserver::start(info(Method::DELETE, "/api/v1/namespaces/a/gizmos/b"));
    assert_eq!(value(&Exporter::default().render(), inflight), Some(1.0));
    drop(pending);
    assert_eq!(value(&Exporter::default().render(), inflight), Some(0.0), "a dropped request is no longer in flight");
}

/// Attack: a client sending requests to made-up paths (or without credentials) must not grow
/// the number of series.
#[test]
fn unknown_paths_add_no_series() {
    answered(Method::GET, "/api/v1/warmup-unknown", 404, true);
    let before = Exporter::default().render().lines().count();
    for i in 0..200 {
        answered(Method::GET, &format!("/apis/made-up-{i}/v1/things-{i}"), 404, true);
        answered(Method::GET, &format!("/random/{i}"), 401, true);
        answered(Method::POST, &format!("/apis/g{i}/v1"), 405, false);
    }
    let text = Exporter::default().render();
    assert!(!text.contains("made-up") && !text.contains("random") && !text.contains("g7"), "{text}");
    assert!(text.lines().count() <= before + 3 * 30, "series grew: {} -> {}", before, text.lines().count());
}

#[test]
fn leader_changes_count_each_new_leader_once() {
    let t = store::LeaderTracker::default();
    t.observe(None);
    assert_eq!(t.changes(), 0);
    t.observe(Some(1));
    t.observe(Some(1));
    assert_eq!(t.changes(), 1);
    t.observe(None);
    t.observe(Some(2));
    assert_eq!(t.changes(), 2, "a leader lost then a new one is one change");
    t.observe(Some(3));
    assert_eq!(t.changes(), 3);
}

#[derive(Debug)]
struct Samples(Vec<crate::metrics::kubelet::ContainerSample>);

impl Collector for Samples {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        kubelet::encode(&self.0, &mut encoder)
    }
}

#[test]
fn container_usage_has_cadvisor_names_and_labels() {
    use crate::metrics::kubelet::ContainerSample;
    let s = |pod: &str, c: &str, ns: u64, mem: u64| ContainerSample {
        namespace: "shop".into(),
        pod: pod.into(),
        container: c.into(),
        cpu_usage_ns: ns,
        memory_bytes: mem,
    };
    let mut r = Registry::default();
    r.register_collector(Box::new(Samples(vec![
        s("web", "nginx", 1_500_000_000, 4096),
        s("web", "sidecar", 0, 1),
        s("db", "pg", 0, 2),
    ])));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
    assert_eq!(value(&text, "kubelet_running_pods"), Some(2.0), "{text}");
    assert_eq!(value(&text, "kubelet_running_containers"), Some(3.0), "{text}");
    assert!(text.contains("# TYPE container_cpu_usage_seconds counter"), "{text}");
    assert_eq!(
        value(&text, r#"container_cpu_usage_seconds_total{container="nginx",pod="web",namespace="shop"}"#),
        Some(1.5),
        "{text}"
    );
    assert_eq!(
        value(&text, r#"container_memory_working_set_bytes{container="nginx",pod="web",namespace="shop"}"#),
        Some(4096.0),
        "{text}"
    );
}

#[test]
fn raft_and_gossip_values() {
    use shoal_store::{MemberStatus, Role, StoreStatus};
    #[derive(Debug)]
    struct C;
    impl Collector for C {
        fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            let st = StoreStatus {
                node_id: 2,
                leader: Some(2),
                term: 7,
                applied_index: 42,
                revision: 40,
                members: vec![
                    MemberStatus { node_id: 1, addr: "a".into(), role: Role::Voter },
                    MemberStatus { node_id: 2, addr: "b".into(), role: Role::Voter },
                    MemberStatus { node_id: 3, addr: "c".into(), role: Role::Learner },
                ],
            };
            store::encode(&st, 3, &mut e)?;
            let m = |name: &str, alive: bool| shoal_gossip::Member {
                name: name.into(),
                gossip_addr: "127.0.0.1:1".parse().unwrap(),
                generation: 1,
                alive,
                attrs: Default::default(),
            };
            gossip::encode(&[m("a", true), m("b", false), m("c", true)], &mut e)
        }
    }
    let mut r = Registry::default();
    r.register_collector(Box::new(C));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
    for (series, v) in [
        ("shoal_raft_term", 7.0),
        ("shoal_raft_applied_index", 42.0),
        ("shoal_raft_is_leader", 1.0),
        ("shoal_raft_leader_changes_total", 3.0),
        (r#"shoal_raft_members{role="voter"}"#, 2.0),
        (r#"shoal_raft_members{role="learner"}"#, 1.0),
        ("shoal_gossip_members_alive", 2.0),
        ("shoal_gossip_members", 3.0),
    ] {
        assert_eq!(value(&text, series), Some(v), "{series} in {text}");
    }
}

/// Attack: the plain listener serves /metrics and nothing of the API.
#[test]
fn plain_listener_serves_metrics_only() {
    let ex = Exporter::default();
    let req = |m: Method, p: &str| Request::builder().method(m).uri(p).body(()).unwrap();
    let r = plain::answer(&ex, &req(Method::GET, "/metrics"));
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], CONTENT_TYPE);
    for p in ["/api/v1/secrets", "/api/v1/namespaces/kube-system/secrets", "/metrics/../api", "/", "/ui/", "/version"] {
        assert_eq!(plain::answer(&ex, &req(Method::GET, p)).status(), StatusCode::NOT_FOUND, "{p}");
    }
    assert_eq!(plain::answer(&ex, &req(Method::POST, "/metrics")).status(), StatusCode::METHOD_NOT_ALLOWED);
}

/// The cost of the instrumentation per request (start, finish, and a scrape per 1000
/// requests): `cargo nextest run -p shoal --lib --run-ignored only -E 'test(/instrumentation_cost/)' --no-capture`.
#[test]
#[ignore = "a measurement, not a check"]
fn instrumentation_cost() {
    let uris = ["/api/v1/namespaces/default/pods", "/apis/apps/v1/namespaces/default/deployments/web", "/api/v1/nodes"];
    let n = 200_000u32;
    let ex = Exporter::default();
    let started = std::time::Instant::now();
    for i in 0..n {
        let uri = uris[i as usize % uris.len()];
        let pending = apiserver::start(info(Method::GET, uri));
        drop(pending.finish(Response::builder().status(200).body(Body::empty()).unwrap()));
        if i % 1000 == 0 {
            std::hint::black_box(ex.render());
        }
    }
    let per = started.elapsed() / n;
    let render = std::time::Instant::now();
    let text = ex.render();
    println!("per request: {per:?}; one scrape: {:?} for {} bytes", render.elapsed(), text.len());
}

#[test]
fn work_queues_have_client_go_names_and_the_controller_as_name() {
    use std::sync::atomic::Ordering;
    let q = crate::reconcile::runner::queue_stats("TestKind");
    q.adds.fetch_add(3, Ordering::Relaxed);
    q.retries.fetch_add(1, Ordering::Relaxed);
    q.depth.store(2, Ordering::Relaxed);
    let text = Exporter::new(None).render();
    assert!(text.contains("# TYPE workqueue_depth gauge"), "{text}");
    assert!(value(&text, "workqueue_depth{name=\"TestKind\"}") == Some(2.0), "{text}");
    assert!(value(&text, "workqueue_adds_total{name=\"TestKind\"}").is_some_and(|v| v >= 3.0), "{text}");
    assert!(value(&text, "workqueue_retries_total{name=\"TestKind\"}").is_some_and(|v| v >= 1.0), "{text}");
}

#[test]
fn image_pulls_and_bytes_by_source() {
    #[derive(Debug)]
    struct Bytes;
    impl Collector for Bytes {
        fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            images::encode(4096, 1_000_000, &mut e)
        }
    }
    let m = images::ImageMetrics::default();
    let mut r = Registry::default();
    m.register(&mut r);
    r.register_collector(Box::new(Bytes));
    m.pulls.get_or_create(&images::PullLabels { result: "success" }).inc();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
    assert_eq!(value(&text, r#"shoal_image_pulls_total{result="success"}"#), Some(1.0), "{text}");
    assert_eq!(value(&text, r#"shoal_image_pulls_total{result="failure"}"#), Some(0.0), "{text}");
    assert_eq!(value(&text, r#"shoal_image_pull_bytes_total{source="peer"}"#), Some(4096.0), "{text}");
    assert_eq!(value(&text, r#"shoal_image_pull_bytes_total{source="registry"}"#), Some(1e6), "{text}");
    // The node's exporter carries both families.
    let all = Exporter::new(None).render();
    assert!(all.contains("# TYPE shoal_image_pull_bytes counter"), "{all}");
    assert!(all.contains("# TYPE shoal_image_pulls counter"), "{all}");
}

#[test]
fn store_latency_has_etcds_name_operation_and_type() {
    let _ = global();
    let res = shoal_kube::resources::lookup("apps", "deployments");
    store::observe("get", &res, std::time::Duration::from_millis(3));
    let text = Exporter::new(None).render();
    assert!(text.contains("# TYPE etcd_request_duration_seconds histogram"), "{text}");
    let count = value(&text, r#"etcd_request_duration_seconds_count{operation="get",type="deployments.apps"}"#);
    assert!(count.unwrap_or(0.0) >= 1.0, "{text}");
}

/// The reading of a real store at scrape time, as a node's collector does it.
struct StoreOf(shoal_store::Store);

impl std::fmt::Debug for StoreOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreOf")
    }
}

impl Collector for StoreOf {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        store::encode(&self.0.status(), 0, &mut e)
    }
}

/// Writes through a one-node Raft group show in the commit latency histogram, and the
/// snapshot it takes (every 5 entries here) in `shoal_raft_snapshot_bytes`.
#[tokio::test]
async fn raft_commits_and_snapshot_size_show_in_metrics() {
    let _ = global();
    let dir = tempfile::tempdir().unwrap();
    let mut c = shoal_store::testing::TestCluster::start_with(dir.path(), 1, |cfg| {
        cfg.snapshot_every = 5;
        cfg.keep_logs_behind_snapshot = 1;
    })
    .await
    .unwrap();
    let s = c.store(1).clone();
    let count = |text: &str| value(text, "shoal_raft_commit_duration_seconds_count").unwrap_or(0.0);
    let before = count(&Exporter::new(None).render());
    for i in 0..20 {
        s.txn(shoal_store::Txn::put(format!("/k/{i}"), vec![b'x'; 100])).await.unwrap();
    }
    let mut text = String::new();
    for _ in 0..100 {
        text = Exporter::new(Some(Box::new(StoreOf(s.clone())))).render();
        if value(&text, "shoal_raft_snapshot_bytes").unwrap_or(0.0) > 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    c.stop_all().await.unwrap();
    assert!(text.contains("# TYPE shoal_raft_commit_duration_seconds histogram"), "{text}");
    assert!(count(&text) >= before + 20.0, "20 writes observed: {text}");
    assert!(text.contains(r#"shoal_raft_commit_duration_seconds_bucket{le="8.192"}"#), "{text}");
    assert!(value(&text, "shoal_raft_snapshot_bytes").unwrap_or(0.0) > 1000.0, "a snapshot holds the 20 keys: {text}");
}

/// Attack: datagrams that are not sealed with the cluster's key (plaintext, or sealed with
/// another key) are counted by reason, as a scrape shows them; flaps damped show as counted.
#[test]
fn gossip_drops_and_flaps_show_by_reason() {
    use shoal_gossip::{GossipKeyring, Sealer};
    let ours = Sealer::new(GossipKeyring::generate()).unwrap();
    let theirs = Sealer::new(GossipKeyring::generate()).unwrap();
    assert!(ours.open(b"plain chitchat bytes").is_err());
    assert!(ours.open(&theirs.seal(b"forged")).is_err());
    assert!(ours.open(&theirs.seal(b"forged again")).is_err());
    assert!(ours.open(&ours.seal(b"fine")).is_ok());
    #[derive(Debug)]
    struct C(Sealer);
    impl Collector for C {
        fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            gossip::encode_counters(4, self.0.stats(), &mut e)
        }
    }
    let mut r = Registry::default();
    r.register_collector(Box::new(C(ours)));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
    assert_eq!(value(&text, r#"shoal_gossip_datagrams_dropped_total{reason="plaintext"}"#), Some(1.0), "{text}");
    assert_eq!(value(&text, r#"shoal_gossip_datagrams_dropped_total{reason="unauthenticated"}"#), Some(2.0), "{text}");
    assert_eq!(value(&text, "shoal_gossip_flaps_total"), Some(4.0), "{text}");
}

/// Attack, over a real socket: the plain listener answers GET /metrics and nothing else
/// (no API path, no other method, no path trick), and a node is configured without it by
/// default or when metrics are off.
#[tokio::test]
async fn plain_listener_over_tcp_serves_get_metrics_only_and_is_off_by_default() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The default config leaves `metrics_listen` unset (config.rs's test): nothing is bound.
    assert_eq!(plain::address(None, true), None, "off by default");
    let on = Some("127.0.0.1:9100".parse().unwrap());
    assert_eq!(plain::address(on, true), on);
    assert_eq!(plain::address(on, false), None, "metrics off: no listener");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let served = tokio::spawn(plain::serve(listener, std::sync::Arc::new(Exporter::default()), stop.clone()));
    let ask = |raw: String| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        let mut out = String::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_string(&mut out)).await;
        out
    };
    let get = |path: &str, method: &str| format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let ok = ask(get("/metrics", "GET")).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("# EOF"), "{ok}");
    for p in [
        "/api/v1/secrets",
        "/api/v1/namespaces/kube-system/secrets",
        "/metrics/../api/v1/secrets",
        "/ui/",
        "/",
        "/metrics?x=/api",
        "//metrics",
    ] {
        let r = ask(get(p, "GET")).await;
        let want = if p.starts_with("/metrics?") { "HTTP/1.1 200" } else { "HTTP/1.1 404" };
        assert!(r.starts_with(want), "{p}: {r}");
        assert!(!r.contains("\"kind\""), "no API object through the plain listener: {r}");
    }
    for m in ["POST", "PUT", "DELETE", "PATCH"] {
        let r = ask(get("/metrics", m)).await;
        assert!(r.starts_with("HTTP/1.1 405"), "{m}: {r}");
    }
    let garbage = ask("\x16\x03\x01 not http at all\r\n\r\n".to_string()).await;
    assert!(!garbage.contains("# EOF"), "{garbage}");
    stop.cancel();
    served.await.unwrap();
}
