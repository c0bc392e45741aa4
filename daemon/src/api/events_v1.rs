//! `events.k8s.io/v1` Events: the core `v1` Events seen through upstream's field mapping
//! (`note` is `message`, `regarding` is `involvedObject`, `reportingController` is
//! `reportingComponent`, `deprecated*` are the old count and timestamps...). There is one set of
//! objects: those of core `v1`, stored once; requests here are converted on the way in and out,
//! so both APIs see every Event and the TTL (`[api] event_ttl`) applies to both.
use std::convert::Infallible;

use axum::body::Body;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Map, Value};

use super::crud::{self, json_response, Ctx, PatchKind};
use super::status::ApiError;
use super::{registry, watch};

pub(crate) const GROUP: &str = "events.k8s.io";
const API_VERSION: &str = "events.k8s.io/v1";

/// (core field, events.k8s.io field), upstream's conversion.
const FIELDS: [(&str, &str); 14] = [
    ("eventTime", "eventTime"),
    ("series", "series"),
    ("reportingComponent", "reportingController"),
    ("reportingInstance", "reportingInstance"),
    ("action", "action"),
    ("reason", "reason"),
    ("involvedObject", "regarding"),
    ("related", "related"),
    ("message", "note"),
    ("type", "type"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

fn rename(obj: &Value, api_version: &str, to_v1: bool) -> Value {
    let Some(o) = obj.as_object() else { return obj.clone() };
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!(api_version));
    out.insert("kind".into(), json!("Event"));
    if let Some(m) = o.get("metadata") {
        out.insert("metadata".into(), m.clone());
    }
    for (core, v1) in FIELDS {
        let (from, to) = if to_v1 { (core, v1) } else { (v1, core) };
        if let Some(v) = o.get(from).filter(|v| !v.is_null()) {
            out.insert(to.into(), v.clone());
        }
    }
    Value::Object(out)
}

/// A core `v1` Event as `events.k8s.io/v1` shows it.
pub(crate) fn to_v1(core: &Value) -> Value {
    rename(core, API_VERSION, true)
}

/// An `events.k8s.io/v1` Event as the core `v1` Event it is stored as. Fields of neither
/// version are dropped, as upstream's decoder prunes them.
pub(crate) fn to_core(v1: &Value) -> Value {
    rename(v1, "v1", false)
}

/// Converts a response document of the core handlers: an Event, an EventList, a Table whose
/// rows carry Events, or a watch event; anything else (a Status, partial metadata) unchanged.
fn convert_doc(doc: &mut Value) {
    match doc["kind"].as_str() {
        Some("Event") if doc["apiVersion"] == "v1" => *doc = to_v1(doc),
        Some("EventList") => {
            doc["apiVersion"] = json!(API_VERSION);
            if let Some(items) = doc["items"].as_array_mut() {
                for i in items {
                    *i = to_v1(i);
                }
            }
        }
        Some("Table") => {
            if let Some(rows) = doc["rows"].as_array_mut() {
                for r in rows {
                    if r["object"]["kind"] == "Event" && r["object"]["apiVersion"] == "v1" {
                        r["object"] = to_v1(&r["object"]);
                    }
                }
            }
        }
        None if doc.get("type").is_some() && doc.get("object").is_some() => {
            let mut o = doc["object"].take();
            if o["kind"] == "Event" && o["apiVersion"] == "v1" {
                o = to_v1(&o);
            } else {
                convert_doc(&mut o);
                if o["kind"] == "Event" && o["apiVersion"] == "v1" {
                    o["apiVersion"] = json!(API_VERSION);
                }
            }
            doc["object"] = o;
        }
        _ => {}
    }
}

/// Rewrites a JSON response of a core handler (whole, or line by line for a watch).
async fn convert_response(r: Response, streaming: bool) -> Result<Response, ApiError> {
    let json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if !json {
        return Ok(r);
    }
    let (parts, body) = r.into_parts();
    if streaming {
        // Watch events, one JSON document per line.
        let lines =
            futures::stream::unfold((body.into_data_stream(), Vec::<u8>::new()), |(mut s, mut buf)| async move {
                loop {
                    if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                        let rest = buf.split_off(i + 1);
                        let line = std::mem::replace(&mut buf, rest);
                        return Some((convert_line(&line), (s, buf)));
                    }
                    match s.next().await {
                        Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                        _ if buf.is_empty() => return None,
                        _ => {
                            let line = std::mem::take(&mut buf);
                            return Some((convert_line(&line), (s, buf)));
                        }
                    }
                }
            })
            .map(Ok::<_, Infallible>);
        return Ok(Response::from_parts(parts, Body::from_stream(lines)));
    }
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|e| ApiError::internal(format!("reading a response: {e}")))?;
    let mut doc: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) => return Ok(Response::from_parts(parts, Body::from(bytes))),
    };
    convert_doc(&mut doc);
    let mut out = json_response(parts.status, &doc);
    *out.headers_mut() = parts.headers;
    out.headers_mut().remove(header::CONTENT_LENGTH);
    Ok(out)
}

fn convert_line(line: &[u8]) -> Bytes {
    match serde_json::from_slice::<Value>(line) {
        Ok(mut v) => {
            convert_doc(&mut v);
            let mut out = shoal_kube::wire::to_vec(&v);
            out.push(b'\n');
            Bytes::from(out)
        }
        Err(_) => Bytes::copy_from_slice(line),
    }
}

/// The body of a write, converted to the core Event it stores.
fn core_body(v1: &Value) -> Result<Bytes, ApiError> {
    if v1["apiVersion"] != API_VERSION || v1["kind"] != "Event" {
        return Err(ApiError::bad_request(format!(
            "the object must be an Event of {API_VERSION} (apiVersion {}, kind {})",
            v1["apiVersion"], v1["kind"]
        )));
    }
    if v1["eventTime"].as_str().is_none_or(str::is_empty) {
        let res = shoal_kube::resources::lookup(GROUP, "events");
        let name = v1["metadata"]["name"].as_str().unwrap_or_default();
        return Err(ApiError::invalid(&res, name, vec![super::status::Cause::required("eventTime")]));
    }
    serde_json::to_vec(&to_core(v1)).map(Bytes::from).map_err(|e| ApiError::internal(e.to_string()))
}

/// Serves one request on `events.k8s.io/v1` events through the core `v1` handlers.
pub(crate) async fn serve(mut ctx: Ctx, method: Method) -> Result<Response, ApiError> {
    ctx.res = registry::builtin("", "events");
    if ctx.sub.is_some() {
        return Err(ApiError::path_not_found());
    }
    let named = ctx.name.is_some();
    match (&method, named) {
        (&Method::POST, false) | (&Method::PUT, true) => {
            let v1 = ctx.body_json()?;
            ctx.body = core_body(&v1)?;
            ctx.content_type = "application/json".into();
        }
        (&Method::PATCH, true) => {
            // The patch applies to the object as this version shows it; the result is stored.
            let kind = PatchKind::from_content_type(&ctx.content_type)
                .ok_or_else(|| ApiError::unsupported_media(&ctx.content_type))?;
            let name = ctx.name()?.to_string();
            let current = to_v1(&ctx.get_existing(&name).await?);
            let patched = crud::apply_patch(kind, &current, &ctx.body, GROUP, "Event")?;
            ctx.body = core_body(&patched)?;
            ctx.content_type = "application/json".into();
            return convert_response(crud::update(&ctx).await?, false).await;
        }
        _ => {}
    }
    let r = match (&method, named) {
        (&Method::GET, false) if ctx.flag("watch") => return convert_response(watch::watch(ctx).await?, true).await,
        (&Method::GET, false) => crud::list(&ctx).await?,
        (&Method::POST, false) => crud::create(&ctx).await?,
        (&Method::DELETE, false) => crud::delete_collection(&ctx).await?,
        (&Method::GET, true) => crud::get(&ctx).await?,
        (&Method::PUT, true) => crud::update(&ctx).await?,
        (&Method::DELETE, true) => crud::delete(&ctx).await?,
        _ => {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({method})"
            )))
        }
    };
    if r.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Ok(r.into_response());
    }
    convert_response(r, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core_event() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "web.1", "namespace": "default", "resourceVersion": "7"},
            "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"},
            "reason": "Started", "message": "Started container web", "type": "Normal",
            "source": {"component": "kubelet", "host": "n1"},
            "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:05Z", "count": 2,
            "eventTime": null, "reportingComponent": "kubelet", "reportingInstance": "n1",
        })
    }

    #[test]
    fn core_events_show_with_upstream_field_names() {
        let v = to_v1(&core_event());
        assert_eq!(v["apiVersion"], "events.k8s.io/v1");
        assert_eq!(v["note"], "Started container web");
        assert_eq!(v["regarding"]["name"], "web");
        assert_eq!(v["reportingController"], "kubelet");
        assert_eq!(v["deprecatedCount"], 2);
        assert_eq!(v["deprecatedSource"]["host"], "n1");
        assert_eq!(v["deprecatedLastTimestamp"], "2026-01-01T00:00:05Z");
        assert!(v.get("message").is_none() && v.get("involvedObject").is_none() && v.get("eventTime").is_none());
        assert_eq!(v["metadata"]["resourceVersion"], "7");
        // And back: the same core Event (nulls dropped).
        let mut want = core_event();
        want.as_object_mut().map(|o| o.remove("eventTime"));
        assert_eq!(to_core(&v), want);
    }

    #[test]
    fn lists_tables_and_watch_events_are_converted_statuses_are_not() {
        let mut list = json!({"kind": "EventList", "apiVersion": "v1", "items": [core_event()]});
        convert_doc(&mut list);
        assert_eq!(list["apiVersion"], "events.k8s.io/v1");
        assert_eq!(list["items"][0]["note"], "Started container web");
        let mut ev = json!({"type": "ADDED", "object": core_event()});
        convert_doc(&mut ev);
        assert_eq!(ev["object"]["regarding"]["kind"], "Pod");
        let mut bookmark = json!({"type": "BOOKMARK", "object": {"kind": "Event", "apiVersion": "v1", "metadata": {"resourceVersion": "9"}}});
        convert_doc(&mut bookmark);
        assert_eq!(bookmark["object"]["apiVersion"], "events.k8s.io/v1");
        let mut table = json!({"kind": "Table", "rows": [{"cells": [], "object": core_event()}]});
        convert_doc(&mut table);
        assert_eq!(table["rows"][0]["object"]["note"], "Started container web");
        let mut status = json!({"kind": "Status", "apiVersion": "v1", "message": "m", "code": 404});
        let before = status.clone();
        convert_doc(&mut status);
        assert_eq!(status, before);
        let line = convert_line(
            b"{\"type\":\"DELETED\",\"object\":{\"kind\":\"Event\",\"apiVersion\":\"v1\",\"message\":\"x\"}}\n",
        );
        let v: Value = serde_json::from_slice(&line).unwrap_or_default();
        assert_eq!(v["object"]["note"], "x");
        assert!(line.ends_with(b"\n"));
    }

    #[test]
    fn writes_must_be_events_of_this_version_with_an_event_time() {
        let ok = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
            "eventTime": "2026-01-01T00:00:00.000000Z", "note": "n", "regarding": {"kind": "Pod", "name": "p"},
            "reportingController": "me", "reportingInstance": "me-1", "action": "Act", "reason": "R", "type": "Normal"});
        let core: Value = serde_json::from_slice(&core_body(&ok).unwrap_or_default()).unwrap_or_default();
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["message"], "n");
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!(core["reportingComponent"], "me");
        let mut wrong = ok.clone();
        wrong["apiVersion"] = json!("v1");
        assert_eq!(core_body(&wrong).map_err(|e| e.code).err(), Some(400));
        let mut no_time = ok;
        no_time.as_object_mut().map(|o| o.remove("eventTime"));
        assert_eq!(core_body(&no_time).map_err(|e| e.code).err(), Some(422));
    }
}
