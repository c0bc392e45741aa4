//! `apiregistration.k8s.io/v1` APIServices, as kube-apiserver shows them: one `Local` APIService
//! per served group/version (`v1.`, `v1.apps`, ..., and those of the CustomResourceDefinitions),
//! with the group and version priorities of kube-aggregator and the condition
//! `Available=True` (reason `Local`). shoal serves every API itself and aggregates no other API
//! server, so these are derived from what is served and are read-only: a write is a 405.
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};
use shoal_kube::Resource;
use tokio::sync::mpsc;

use super::crud::{json_response, Ctx};
use super::status::ApiError;
use super::{discovery, list_options, metadata, registry, table};

pub(crate) const GROUP: &str = "apiregistration.k8s.io";

/// The APIService resource (served beside the built-in table: it has no stored objects).
pub(crate) fn resource() -> Resource {
    Resource {
        group: GROUP.into(),
        version: "v1".into(),
        kind: "APIService".into(),
        plural: "apiservices".into(),
        singular: "apiservice".into(),
        namespaced: false,
        short_names: vec![],
        categories: vec!["api-extensions".into()],
        subresources: vec!["status".into()],
    }
}

/// The verbs discovery lists for it.
pub(crate) const VERBS: [&str; 3] = ["get", "list", "watch"];

/// kube-apiserver's group and version priorities (kube-aggregator's table); a group it does not
/// list gets a CRD's (1000, 100).
fn priority(group: &str, version: &str) -> (i64, i64) {
    match (group, version) {
        ("", "v1") => (18000, 1),
        ("apiregistration.k8s.io", _) => (18000, 15),
        ("apps", _) => (17800, 15),
        ("events.k8s.io", _) => (17750, 15),
        ("authentication.k8s.io", _) => (17700, 15),
        ("authorization.k8s.io", _) => (17600, 15),
        ("autoscaling", "v2") => (17500, 30),
        ("autoscaling", _) => (17500, 15),
        ("batch", _) => (17400, 15),
        ("certificates.k8s.io", _) => (17300, 15),
        ("networking.k8s.io", _) => (17200, 15),
        ("policy", _) => (17100, 15),
        ("rbac.authorization.k8s.io", _) => (17000, 15),
        ("storage.k8s.io", _) => (16800, 15),
        ("apiextensions.k8s.io" | "admissionregistration.k8s.io", _) => (16700, 15),
        ("scheduling.k8s.io", _) => (16600, 15),
        ("coordination.k8s.io", _) => (16500, 15),
        ("node.k8s.io", _) => (16300, 15),
        ("discovery.k8s.io", _) => (16200, 15),
        (discovery::METRICS_GROUP, _) => (100, 100),
        _ => (1000, 100),
    }
}

/// A stable uid for a derived object (the same on every node and after restarts).
fn uid_for(name: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("apiservice/{name}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(b).to_string()
}

/// One Local APIService. `since`: when the group appeared (creationTimestamp), `rv`: the
/// resourceVersion of what it is derived from.
fn api_service(group: &str, version: &str, since: &str, rv: &str, automanaged: &str) -> Value {
    let name = format!("{version}.{group}");
    let (group_priority, version_priority) = priority(group, version);
    json!({
        "kind": "APIService",
        "apiVersion": "apiregistration.k8s.io/v1",
        "metadata": {
            "name": name,
            "uid": uid_for(&name),
            "resourceVersion": rv,
            "creationTimestamp": since,
            "labels": {"kube-aggregator.kubernetes.io/automanaged": automanaged},
        },
        "spec": {
            "service": null,
            "group": group,
            "version": version,
            "groupPriorityMinimum": group_priority,
            "versionPriority": version_priority,
        },
        "status": {"conditions": [{
            "type": "Available",
            "status": "True",
            "lastTransitionTime": since,
            "reason": "Local",
            "message": "Local APIServices are always available",
        }]},
    })
}

/// Every APIService, sorted by name, and the store revision they were read at.
pub(crate) async fn all(ctx: &Ctx) -> Result<(Vec<Value>, u64), ApiError> {
    let objects = &ctx.state.objects;
    let crd_res = registry::crd_resource();
    let (crds, rev) = objects.list(&crd_res, None).await.map_err(|e| ApiError::from_objects(e, &crd_res, ""))?;
    let crds: Vec<Value> = crds.into_iter().filter(|c| c["metadata"]["deletionTimestamp"].is_null()).collect();
    // The built-in APIs are as old as the cluster: its `default` namespace.
    let ns = super::registry::builtin("", "namespaces");
    let default = objects.get(&ns, None, "default").await.ok().flatten().unwrap_or(Value::Null);
    let born = default["metadata"]["creationTimestamp"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(shoal_kube::objects::now_rfc3339);
    let born_rv = default["metadata"]["resourceVersion"].as_str().unwrap_or("1").to_string();
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    let mut add = |v: Value| {
        let name = v["metadata"]["name"].as_str().unwrap_or_default().to_string();
        out.entry(name).or_insert(v);
    };
    add(api_service("", "v1", &born, &born_rv, "onstart"));
    let mut builtin = shoal_kube::resources::builtin();
    builtin.push(resource());
    for (g, vs) in discovery::groups(&builtin) {
        for v in vs {
            add(api_service(&g, &v, &born, &born_rv, "onstart"));
        }
    }
    for crd in &crds {
        for r in registry::crd_resources(crd) {
            let since = crd["metadata"]["creationTimestamp"].as_str().unwrap_or(&born).to_string();
            let rv = crd["metadata"]["resourceVersion"].as_str().unwrap_or("1").to_string();
            add(api_service(&r.group, &r.version, &since, &rv, "true"));
        }
    }
    Ok((out.into_values().collect(), rev))
}

fn read_only(method: &Method) -> ApiError {
    ApiError::method_not_allowed(format!(
        "the server does not allow this method on the requested resource ({method}): shoal serves every API \
         group itself and aggregates no other API server, so its APIServices are read-only"
    ))
}

/// Serves a request on `apiservices` (the object or its status).
pub(crate) async fn serve(ctx: Ctx, method: Method) -> Result<Response, ApiError> {
    if method != Method::GET {
        return Err(read_only(&method));
    }
    let (labels, fields) = ctx.selectors()?;
    let keep = |o: &Value| labels.matches_object(o) && fields.matches(o);
    if let Some(name) = ctx.name.as_deref() {
        let partial = metadata::for_object(&ctx.accept)?;
        let (items, _) = all(&ctx).await?;
        let obj = items
            .into_iter()
            .find(|o| o["metadata"]["name"] == name)
            .ok_or_else(|| ApiError::not_found(&ctx.res, name))?;
        return Ok(json_response(StatusCode::OK, &render(&ctx, obj, partial)));
    }
    if ctx.flag("watch") {
        return watch(ctx).await;
    }
    list_options::check_list(&ctx.query)?;
    let partial = metadata::for_list(&ctx.accept)?;
    let (items, rev) = all(&ctx).await?;
    let items: Vec<Value> = items.into_iter().filter(keep).collect();
    let meta = json!({"resourceVersion": rev.to_string()});
    if partial {
        return Ok(json_response(StatusCode::OK, &metadata::list(&items, meta)));
    }
    if table::wants_table(&ctx.accept) {
        let include = table::parse_include(ctx.query.get("includeObject").map(String::as_str));
        return Ok(json_response(
            StatusCode::OK,
            &table::table(&ctx.res, None, &items, include, Some(rev.to_string())),
        ));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "APIServiceList", "apiVersion": "apiregistration.k8s.io/v1", "metadata": meta, "items": items}),
    ))
}

/// One object as the client asked for it (whole, its metadata, or a one-row Table).
fn render(ctx: &Ctx, obj: Value, partial: bool) -> Value {
    if partial {
        metadata::object(&obj)
    } else if table::wants_table(&ctx.accept) {
        let include = table::parse_include(ctx.query.get("includeObject").map(String::as_str));
        table::table(&ctx.res, None, std::slice::from_ref(&obj), include, None)
    } else {
        obj
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut v = shoal_kube::wire::to_vec(&json!({"type": kind, "object": object}));
    v.push(b'\n');
    Bytes::from(v)
}

/// A watch: the current APIServices (when asked for), the end-of-initial-events bookmark of a
/// watch-list, then an event whenever a CustomResourceDefinition adds or removes a group/version.
async fn watch(ctx: Ctx) -> Result<Response, ApiError> {
    let mode = list_options::check_watch(&ctx.query)?;
    let partial = metadata::for_object(&ctx.accept)?;
    let timeout = match ctx.query.get("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse::<u64>().map_err(|_| ApiError::bad_request(format!("timeoutSeconds: invalid value {t:?}")))?,
        ),
        None => Duration::from_secs(1800),
    };
    let (labels, fields) = ctx.selectors()?;
    let (current, rev) = all(&ctx).await?;
    let crd_res = registry::crd_resource();
    let mut crd_events = ctx
        .state
        .objects
        .watch(&crd_res, None, Some(rev))
        .await
        .map_err(|e| ApiError::from_objects(e, &crd_res, ""))?;
    let bookmarks = ctx.flag("allowWatchBookmarks");
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let shutdown = ctx.state.shutdown.clone();
    let initial = mode.initial_events;
    tokio::spawn(async move {
        let keep = |o: &Value| labels.matches_object(o) && fields.matches(o);
        let enc = |kind: &str, o: &Value| line(kind, &if partial { metadata::object(o) } else { o.clone() });
        if initial {
            for o in current.iter().filter(|o| keep(o)) {
                if tx.send(enc("ADDED", o)).await.is_err() {
                    return;
                }
            }
            if bookmarks {
                let b = json!({"kind": "APIService", "apiVersion": "apiregistration.k8s.io/v1", "metadata": {
                    "resourceVersion": rev.to_string(),
                    "annotations": {super::watch::INITIAL_EVENTS_END: "true"},
                }});
                if tx.send(enc("BOOKMARK", &b)).await.is_err() {
                    return;
                }
            }
        }
        let name = |o: &Value| o["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let mut seen: BTreeMap<String, Value> = current.into_iter().map(|o| (name(&o), o)).collect();
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                _ = shutdown.cancelled() => break,
                _ = tx.closed() => break,
                ev = crd_events.recv() => {
                    if !matches!(ev, Some(Ok(_))) {
                        break;
                    }
                    let Ok((now, _)) = all(&ctx).await else { break };
                    let now: BTreeMap<String, Value> = now.into_iter().map(|o| (name(&o), o)).collect();
                    let gone = seen.iter().filter(|(n, _)| !now.contains_key(*n)).map(|(_, o)| ("DELETED", o));
                    let added = now.iter().filter(|(n, _)| !seen.contains_key(*n)).map(|(_, o)| ("ADDED", o));
                    let lines: Vec<Bytes> = gone.chain(added).filter(|(_, o)| keep(o)).map(|(k, o)| enc(k, o)).collect();
                    for l in lines {
                        if tx.send(l).await.is_err() {
                            return;
                        }
                    }
                    seen = now;
                }
            }
        }
    });
    let body =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) }).map(Ok::<_, Infallible>);
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], Body::from_stream(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_api_services_as_upstream() {
        let a = api_service("apps", "v1", "2026-01-01T00:00:00Z", "5", "onstart");
        assert_eq!(a["metadata"]["name"], "v1.apps");
        assert_eq!(a["spec"]["service"], Value::Null);
        assert_eq!(a["spec"]["groupPriorityMinimum"], 17800);
        assert_eq!(a["status"]["conditions"][0]["reason"], "Local");
        assert_eq!(api_service("", "v1", "t", "1", "onstart")["metadata"]["name"], "v1.");
        assert_eq!(priority("metallb.io", "v1beta1"), (1000, 100));
        assert_eq!(uid_for("v1.apps"), uid_for("v1.apps"));
        assert_ne!(uid_for("v1.apps"), uid_for("v1.batch"));
    }
}
