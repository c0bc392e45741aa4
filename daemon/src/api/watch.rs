//! `?watch=true`: a stream of `{"type": ..., "object": ...}` lines, one per change, flushed as
//! they happen. Without a resourceVersion (or with "0") the current objects come first as
//! ADDED; a resourceVersion older than the store's history gets one ERROR event with a 410
//! Expired Status, after which clients re-list.
//!
//! Watch-list (`sendInitialEvents=true&resourceVersionMatch=NotOlderThan`, what client-go
//! 1.34+ asks for instead of a list): the current objects as ADDED events, then, when the client
//! allows bookmarks, one BOOKMARK carrying the list's resourceVersion and the annotation
//! `k8s.io/initial-events-end: "true"`, then the live events, as kube-apiserver 1.34+ serves it.
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::crud::{select, set_type_meta, Ctx};
use super::status::ApiError;
use super::table;
use super::{list_options, metadata};

/// Default stream length when the client names none (kube-apiserver picks 30-60 minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
const BOOKMARK_EVERY: Duration = Duration::from_secs(30);
/// How long a watch-list from a resourceVersion newer than this node has seen waits for it
/// (upstream waits 3 s, then answers 504).
const CATCH_UP: Duration = Duration::from_secs(3);
/// The annotation of the bookmark that ends the initial events.
pub(crate) const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

fn line(kind: &str, object: Value) -> Bytes {
    let mut v = shoal_kube::wire::to_vec(&json!({"type": kind, "object": object}));
    v.push(b'\n');
    Bytes::from(v)
}

pub(crate) async fn watch(ctx: Ctx) -> Result<Response, ApiError> {
    // One slot of the user's watches, held until the stream ends (`[api] max_watches_per_user`);
    // requests without a user (in-process callers) are not counted.
    let slot = match &ctx.user {
        Some(u) => Some(ctx.state.limits.watch(&u.name)?),
        None => None,
    };
    let (labels, fields) = ctx.selectors()?;
    let timeout = match ctx.query.get("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse::<u64>().map_err(|_| ApiError::bad_request(format!("timeoutSeconds: invalid value {t:?}")))?,
        ),
        None => DEFAULT_TIMEOUT,
    };
    let partial = metadata::for_object(&ctx.accept)?;
    let as_table = !partial && table::wants_table(&ctx.accept);
    let include = table::parse_include(ctx.query.get("includeObject").map(|s| s.as_str()));
    let columns = if as_table { table::custom_columns(&ctx.state.objects, &ctx.res).await } else { None };
    let bookmarks = ctx.flag("allowWatchBookmarks");
    let mode = list_options::check_watch(&ctx.query)?;
    let (initial, start) = match (mode.initial_events, mode.resource_version) {
        (true, rv) => current_at_least(&ctx, rv.unwrap_or(0)).await?,
        (false, Some(rv)) => (Vec::new(), rv),
        (false, None) => (Vec::new(), select(&ctx).await?.1),
    };
    let end_bookmark = mode.initial_events && bookmarks;
    let res = ctx.res.clone();
    let encode = move |kind: &str, mut obj: Value| -> Bytes {
        set_type_meta(&res, &mut obj);
        if partial {
            line(kind, metadata::object(&obj))
        } else if as_table {
            line(kind, table::table(&res, columns.as_deref(), std::slice::from_ref(&obj), include, None))
        } else {
            line(kind, obj)
        }
    };
    let stream = match ctx.state.objects.watch(&ctx.res, ctx.ns(), Some(start)).await {
        Ok(rx) => Some(rx),
        Err(shoal_kube::Error::Store(shoal_store::Error::Compacted { requested, oldest })) => {
            tracing::debug!(requested, oldest, "watch from a compacted revision");
            None
        }
        Err(e) => return Err(ApiError::from_objects(e, &ctx.res, "")),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let shutdown = ctx.state.shutdown.clone();
    let bookmark_kind = ctx.res.kind.clone();
    let api_version = ctx.res.api_version();
    tokio::spawn(async move {
        let _slot = slot;
        let expired = |rev: u64| line("ERROR", ApiError::expired(format!("too old resource version: {rev}")).to_json());
        let Some(mut events) = stream else {
            let _ = tx.send(expired(start)).await;
            return;
        };
        for obj in initial {
            if tx.send(encode("ADDED", obj)).await.is_err() {
                return;
            }
        }
        if end_bookmark {
            let obj = json!({"kind": bookmark_kind, "apiVersion": api_version, "metadata": {
                "resourceVersion": start.to_string(),
                "annotations": {INITIAL_EVENTS_END: "true"},
            }});
            if tx.send(line("BOOKMARK", if partial { metadata::object(&obj) } else { obj })).await.is_err() {
                return;
            }
        }
        let mut last = start;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(BOOKMARK_EVERY);
        tick.reset();
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                _ = shutdown.cancelled() => break,
                _ = tx.closed() => break,
                _ = tick.tick(), if bookmarks => {
                    let obj = json!({"kind": bookmark_kind, "apiVersion": api_version, "metadata": {"resourceVersion": last.to_string()}});
                    if tx.send(line("BOOKMARK", if partial { metadata::object(&obj) } else { obj })).await.is_err() {
                        break;
                    }
                }
                ev = events.recv() => match ev {
                    None => break,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "watch stream ended by the store");
                        let _ = tx.send(expired(last)).await;
                        break;
                    }
                    Some(Ok(ev)) => {
                        last = ev.revision;
                        if !labels.matches_object(&ev.object) || !fields.matches(&ev.object) {
                            continue;
                        }
                        if tx.send(encode(ev.kind, ev.object)).await.is_err() {
                            break;
                        }
                    }
                },
            }
        }
    });
    let body =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) }).map(Ok::<_, Infallible>);
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], Body::from_stream(body)).into_response())
}

/// The objects in scope at a revision not older than `rv`, and that revision. A node that has
/// not yet seen `rv` waits a little for its store to catch up, then answers 504 as upstream.
async fn current_at_least(ctx: &Ctx, rv: u64) -> Result<(Vec<Value>, u64), ApiError> {
    let started = tokio::time::Instant::now();
    loop {
        let (items, rev) = select(ctx).await?;
        if rev >= rv {
            return Ok((items, rev));
        }
        if started.elapsed() >= CATCH_UP {
            let mut e = ApiError::new(504, "Timeout", format!("Too large resource version: {rv}, current: {rev}"));
            e.details = Some(json!({"retryAfterSeconds": 1}));
            return Err(e);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use futures::StreamExt;
    use serde_json::{json, Value};
    use shoal_kube::Objects;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::api::ApiState;

    fn state() -> Arc<ApiState> {
        let objects = Objects::new(shoal_store::Store::in_memory());
        Arc::new(ApiState {
            authz: crate::auth::Authorizer::new(objects.clone()),
            tokens: None,
            max_token_expiration: std::time::Duration::from_secs(3600),
            audit: None,
            exporter: Arc::new(crate::metrics::Exporter::default()),
            objects,
            node_name: "n1".into(),
            streams: None,
            max_body_bytes: 1 << 20,
            metrics: None,
            heartbeats: None,
            shutdown: CancellationToken::new(),
            external_ip_cidrs: Vec::new(),
            service_cidr: Default::default(),
            pod_security_defaults: Default::default(),
            limits: Arc::new(crate::api::limits::Limits::new(crate::api::Caps::default())),
        })
    }

    fn ctx(state: &Arc<ApiState>, query: &[(&str, &str)]) -> Ctx {
        Ctx {
            state: state.clone(),
            res: shoal_kube::resources::lookup("", "configmaps"),
            ns: Some("default".into()),
            name: None,
            sub: None,
            query: query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>(),
            accept: "application/json".into(),
            content_type: String::new(),
            user: None,
            user_agent: String::new(),
            body: Bytes::new(),
        }
    }

    async fn put(state: &Arc<ApiState>, name: &str) -> Value {
        let c = ctx(state, &[]);
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}});
        state.objects.create(&c.res, Some("default"), obj).await.expect("create")
    }

    /// The events of a watch response, one JSON value per line, until `n` have come.
    async fn events(resp: Response, n: usize) -> Vec<Value> {
        let mut body = resp.into_body().into_data_stream();
        let mut buf = Vec::new();
        let mut out = Vec::new();
        while out.len() < n {
            let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
                .await
                .expect("an event within 5 s")
                .expect("stream open")
                .expect("chunk");
            buf.extend_from_slice(&chunk);
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                out.push(serde_json::from_slice(&line).expect("json line"));
            }
        }
        out
    }

    const WATCH_LIST: &[(&str, &str)] = &[
        ("watch", "true"),
        ("sendInitialEvents", "true"),
        ("resourceVersionMatch", "NotOlderThan"),
        ("allowWatchBookmarks", "true"),
    ];

    #[tokio::test]
    async fn watch_list_sends_objects_then_the_end_bookmark_then_live_events() {
        let st = state();
        put(&st, "a").await;
        put(&st, "b").await;
        let resp = watch(ctx(&st, WATCH_LIST)).await.expect("watch");
        let first = events(resp, 3).await;
        // Collect what follows on a second read: the live event after the bookmark.
        let types: Vec<&str> = first.iter().map(|e| e["type"].as_str().unwrap_or_default()).collect();
        assert_eq!(types, ["ADDED", "ADDED", "BOOKMARK"]);
        let names: Vec<&str> =
            first[..2].iter().map(|e| e["object"]["metadata"]["name"].as_str().unwrap_or("")).collect();
        assert_eq!(names, ["a", "b"]);
        let bm = &first[2]["object"];
        assert_eq!(bm["kind"], "ConfigMap");
        assert_eq!(bm["apiVersion"], "v1");
        assert_eq!(bm["metadata"]["annotations"][INITIAL_EVENTS_END], "true");
        let (_, rev) = select(&ctx(&st, &[])).await.expect("list");
        assert_eq!(bm["metadata"]["resourceVersion"], rev.to_string());
    }

    #[tokio::test]
    async fn live_events_follow_the_end_bookmark() {
        let st = state();
        put(&st, "a").await;
        let resp = watch(ctx(&st, WATCH_LIST)).await.expect("watch");
        let st2 = st.clone();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            put(&st2, "later").await
        });
        let got = events(resp, 3).await;
        writer.await.expect("writer");
        let types: Vec<&str> = got.iter().map(|e| e["type"].as_str().unwrap_or_default()).collect();
        assert_eq!(types, ["ADDED", "BOOKMARK", "ADDED"]);
        assert_eq!(got[2]["object"]["metadata"]["name"], "later");
    }

    #[tokio::test]
    async fn without_bookmarks_there_is_no_end_marker() {
        // A watch-list without allowWatchBookmarks, and a legacy watch from "0": objects, then live.
        for q in [
            &[("watch", "true"), ("sendInitialEvents", "true"), ("resourceVersionMatch", "NotOlderThan")][..],
            &[("watch", "true"), ("resourceVersion", "0")][..],
        ] {
            let st = state();
            put(&st, "a").await;
            let resp = watch(ctx(&st, q)).await.expect("watch");
            let st2 = st.clone();
            let writer = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                put(&st2, "later").await
            });
            let got = events(resp, 2).await;
            writer.await.expect("writer");
            let types: Vec<&str> = got.iter().map(|e| e["type"].as_str().unwrap_or_default()).collect();
            assert_eq!(types, ["ADDED", "ADDED"], "{q:?}");
            assert_eq!(got[1]["object"]["metadata"]["name"], "later");
        }
    }

    #[tokio::test]
    async fn send_initial_events_false_starts_from_now() {
        let st = state();
        put(&st, "old").await;
        let q = [("watch", "true"), ("sendInitialEvents", "false"), ("resourceVersionMatch", "NotOlderThan")];
        let resp = watch(ctx(&st, &q)).await.expect("watch");
        let st2 = st.clone();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            put(&st2, "new").await
        });
        let got = events(resp, 1).await;
        writer.await.expect("writer");
        assert_eq!(got[0]["type"], "ADDED");
        assert_eq!(got[0]["object"]["metadata"]["name"], "new");
    }

    #[tokio::test]
    async fn bad_combinations_and_future_versions_are_refused() {
        let st = state();
        let e = watch(ctx(&st, &[("watch", "true"), ("sendInitialEvents", "true")])).await.expect_err("422");
        assert_eq!(e.code, 422);
        let q = [
            ("watch", "true"),
            ("sendInitialEvents", "true"),
            ("resourceVersionMatch", "NotOlderThan"),
            ("resourceVersion", "999999"),
        ];
        let e = watch(ctx(&st, &q)).await.expect_err("504");
        assert_eq!(e.code, 504);
        assert!(e.message.starts_with("Too large resource version: 999999"), "{}", e.message);
    }
}
