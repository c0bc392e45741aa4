//! `?watch=true`: a stream of `{"type": ..., "object": ...}` lines, one per change, flushed as
//! they happen. Without a resourceVersion (or with "0") the current objects come first as
//! ADDED; a resourceVersion older than the store's history gets one ERROR event with a 410
//! Expired Status, after which clients re-list.
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

/// Default stream length when the client names none (kube-apiserver picks 30-60 minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
const BOOKMARK_EVERY: Duration = Duration::from_secs(30);

fn line(kind: &str, object: Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

pub(crate) async fn watch(ctx: Ctx) -> Result<Response, ApiError> {
    let (labels, fields) = ctx.selectors()?;
    let timeout = match ctx.query.get("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse::<u64>().map_err(|_| ApiError::bad_request(format!("timeoutSeconds: invalid value {t:?}")))?,
        ),
        None => DEFAULT_TIMEOUT,
    };
    let as_table = table::wants_table(&ctx.accept);
    let include = table::parse_include(ctx.query.get("includeObject").map(|s| s.as_str()));
    let columns = if as_table { table::custom_columns(&ctx.state.objects, &ctx.res).await } else { None };
    let bookmarks = ctx.flag("allowWatchBookmarks");
    let rv = ctx.query.get("resourceVersion").filter(|s| !s.is_empty()).cloned();
    let (initial, start) = match rv.as_deref() {
        None | Some("0") => select(&ctx).await?,
        Some(s) => {
            let rev =
                s.parse::<u64>().map_err(|_| ApiError::bad_request(format!("resourceVersion: invalid value {s:?}")))?;
            (Vec::new(), rev)
        }
    };
    let res = ctx.res.clone();
    let encode = move |kind: &str, mut obj: Value| -> Bytes {
        set_type_meta(&res, &mut obj);
        if as_table {
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
                    if tx.send(line("BOOKMARK", obj)).await.is_err() {
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
