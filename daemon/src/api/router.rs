//! Parses request paths (which depend on the served resources, custom ones included) and
//! dispatches to the verbs.
use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Query;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tracing::debug;

use super::crud::{self, json_response, Ctx, PatchKind};
use super::status::ApiError;
use super::{
    apiservice, authz, discovery, ephemeral, events_v1, exec, namespace, openapi, openapi_v2, pod, portforward, proxy,
    registry, scale, token_request, watch, ApiState,
};
use crate::auth::UserInfo;

fn header_str(h: &HeaderMap, name: header::HeaderName) -> String {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

fn ok(v: Value) -> Result<Response, ApiError> {
    Ok(json_response(StatusCode::OK, &v))
}

/// Entry point of every request.
pub(crate) async fn dispatch(state: Arc<ApiState>, cert_user: Option<Arc<UserInfo>>, req: Request<Body>) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let received = jiff::Timestamp::now();
    // The status page holds no data: served to anyone (its script calls the API with a token).
    if let Some(r) = super::ui::answer(&method, &path) {
        return r;
    }
    let (mut parts, body) = req.into_parts();
    let audit = state.audit.clone().filter(|_| super::audit::audited(&method));
    let audit_parts = audit.as_ref().map(|_| {
        let ua = parts.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let peer = parts.extensions.get::<std::net::SocketAddr>().map(|a| a.ip());
        (parts.uri.clone(), (ua, peer))
    });
    let mut authenticated = None;
    let mut acting = None;
    let (result, notes) = match authz::check(&state, cert_user.as_deref(), &parts, &mut authenticated).await {
        Ok(user) => {
            acting = Some(user.clone());
            parts.extensions.insert(user);
            crate::admission::notes::collect(route(state, Request::from_parts(parts, body))).await
        }
        Err(e) => (Err(e), Default::default()),
    };
    if let (Some(log), Some((uri, (user_agent, peer)))) = (audit, audit_parts) {
        let code = match &result {
            Ok(r) => r.status().as_u16(),
            Err(e) => e.code,
        };
        let query = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri).map(|q| q.0).unwrap_or_default();
        let attrs = crate::auth::Attributes::from_request(method.as_str(), &path, &query);
        let impersonated = match (&acting, &authenticated) {
            (Some(a), Some(u)) => a.name != u.name || a.groups != u.groups,
            _ => false,
        };
        let user = acting.as_deref().or(authenticated.as_ref());
        log.record(&super::audit::Record {
            user,
            authenticated: if impersonated { authenticated.as_ref() } else { None },
            attrs: &attrs,
            uri: &uri.to_string(),
            source_ip: peer,
            user_agent: &user_agent,
            code,
            received,
            annotations: &notes.audit,
        });
    }
    let mut response = match result {
        Ok(r) => {
            debug!(%method, %path, code = r.status().as_u16(), "api request");
            r
        }
        Err(e) => {
            debug!(%method, %path, code = e.code, reason = e.reason, message = %e.message, "api request failed");
            // Counted without resource labels: an unknown path or an unauthenticated client
            // must not add series.
            let unrouted = e.code == 401 || e.message == ApiError::path_not_found().message;
            let mut r = e.into_response();
            if unrouted {
                r.extensions_mut().insert(crate::metrics::apiserver::Unrouted);
            }
            r
        }
    };
    for w in &notes.warnings {
        if let Ok(v) = axum::http::HeaderValue::from_str(&crate::admission::notes::header_value(w)) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
    response
}

async fn route(state: Arc<ApiState>, req: Request<Body>) -> Result<Response, ApiError> {
    let path = req.uri().path().to_string();
    let segs: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(String::from).collect();
    let segs: Vec<&str> = segs.iter().map(|s| s.as_str()).collect();
    let get = req.method() == Method::GET;
    match segs.as_slice() {
        ["version"] if get => ok(discovery::version()),
        ["metrics"] if get && crate::metrics::enabled() => {
            Ok((StatusCode::OK, [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], state.exporter.render())
                .into_response())
        }
        [h, ..] if get && ["healthz", "livez", "readyz"].contains(h) => {
            Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "ok").into_response())
        }
        ["api" | "apis"] if get => {
            let core = segs[0] == "api";
            let all = registry::all(&state.objects).await?;
            match discovery::aggregated_version(&header_str(req.headers(), header::ACCEPT)) {
                Some(v) => Ok((
                    StatusCode::OK,
                    [
                        (header::CONTENT_TYPE, discovery::aggregated_content_type(v)),
                        (header::VARY, "Accept".to_string()),
                    ],
                    discovery::aggregated(&all, core, v).to_string(),
                )
                    .into_response()),
                None if core => ok(discovery::api_versions()),
                None => ok(discovery::api_group_list(&all)),
            }
        }
        ["apis", g] if get => discovery::api_group(&registry::all(&state.objects).await?, g)
            .map(ok)
            .unwrap_or_else(|| Err(ApiError::path_not_found())),
        ["openapi", "v3"] if get => {
            let crds = registry::crds(&state.objects).await?;
            ok(openapi::index(&registry::with_custom(&crds), &crds))
        }
        ["openapi", "v2"] if get => {
            let crds = registry::crds(&state.objects).await?;
            let enc = openapi_v2::cached(&registry::with_custom(&crds), &crds);
            let (ct, body) = if openapi_v2::wants_protobuf(&header_str(req.headers(), header::ACCEPT)) {
                (openapi_v2::PROTOBUF, enc.protobuf.clone())
            } else {
                ("application/json", enc.json.clone())
            };
            Ok((
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, ct.to_string()),
                    (header::ETAG, enc.etag.clone()),
                    (header::VARY, "Accept".into()),
                ],
                body,
            )
                .into_response())
        }
        ["openapi", "v3", "api", v] if get => openapi_doc(&state, "", v).await,
        ["openapi", "v3", "apis", g, v] if get => openapi_doc(&state, g, v).await,
        ["apis", g @ ("authorization.k8s.io" | "authentication.k8s.io"), v @ "v1", plural]
            if req.method() == Method::POST =>
        {
            let (g, v, plural) = (g.to_string(), v.to_string(), plural.to_string());
            authz::review(&state, req, &g, &v, &plural, None).await
        }
        ["apis", "authorization.k8s.io", "v1", "namespaces", ns, "localsubjectaccessreviews"]
            if req.method() == Method::POST =>
        {
            let ns = ns.to_string();
            authz::review(&state, req, "authorization.k8s.io", "v1", "localsubjectaccessreviews", Some(&ns)).await
        }
        ["api", "v1", rest @ ..] => {
            let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
            resource(state, "", "v1", rest, req).await
        }
        ["apis", g, v, rest @ ..] => {
            let (g, v) = (g.to_string(), v.to_string());
            let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
            resource(state, &g, &v, rest, req).await
        }
        _ => Err(ApiError::path_not_found()),
    }
}

async fn openapi_doc(state: &ApiState, group: &str, version: &str) -> Result<Response, ApiError> {
    let crds = registry::crds(&state.objects).await?;
    let (doc, _) =
        openapi::cached(&registry::with_custom(&crds), &crds, group, version).ok_or_else(ApiError::path_not_found)?;
    Ok(json_response(StatusCode::OK, &doc))
}

/// Most of an oversized body is still read (and dropped) before the 413, so that a client still
/// sending gets the Status instead of a reset connection.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// A request body must arrive within this (kube-apiserver's default request timeout): a client
/// trickling its body does not hold the request open longer.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

pub(super) async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    tokio::time::timeout(BODY_READ_TIMEOUT, read_body_unbounded(body, limit))
        .await
        .unwrap_or_else(|_| Err(ApiError::new(408, "Timeout", "timed out reading the request body")))
}

async fn read_body_unbounded(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("read request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen > DRAIN_LIMIT {
                break;
            }
            if seen <= limit {
                buf.extend_from_slice(&data);
            }
        }
    }
    if seen > limit {
        return Err(ApiError::too_large(limit));
    }
    Ok(buf.freeze())
}

/// Where in a resource URL a request points.
struct Target {
    ns: Option<String>,
    plural: String,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_target(rest: &[String]) -> Option<Target> {
    let s: Vec<&str> = rest.iter().map(|s| s.as_str()).collect();
    let t = |ns: Option<&str>, plural: &str, name: Option<&&str>, sub: Option<&&str>| Target {
        ns: ns.map(String::from),
        plural: plural.to_string(),
        name: name.map(|n| n.to_string()),
        sub: sub.map(|n| n.to_string()),
    };
    match s.as_slice() {
        ["namespaces", ns, plural, more @ ..] if !["status", "finalize"].contains(plural) => {
            Some(t(Some(ns), plural, more.first(), more.get(1)))
        }
        [plural, more @ ..] => Some(t(None, plural, more.first(), more.get(1))),
        [] => None,
    }
}

async fn resource(
    state: Arc<ApiState>,
    group: &str,
    version: &str,
    rest: Vec<String>,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let method = req.method().clone();
    if rest.is_empty() {
        if method != Method::GET {
            return Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource",
            ));
        }
        let all = registry::all(&state.objects).await?;
        return discovery::resource_list(&all, group, version)
            .map(ok)
            .unwrap_or_else(|| Err(ApiError::path_not_found()));
    }
    let target = parse_target(&rest).ok_or_else(ApiError::path_not_found)?;
    if group == discovery::METRICS_GROUP && version == discovery::METRICS_VERSION {
        if let Some(m) = &state.metrics {
            return match m.to_json(&target.plural, target.ns.as_deref(), target.name.as_deref()) {
                Some(v) => Ok(crud::json_response(StatusCode::OK, &v)),
                None => Err(ApiError::new(
                    404,
                    "NotFound",
                    format!(
                        "{}.metrics.k8s.io \"{}\" not found",
                        target.plural,
                        target.name.as_deref().unwrap_or_default()
                    ),
                )),
            };
        }
        return crud::metrics(&target.plural, target.name.as_deref());
    }
    let res = registry::resolve(&state.objects, group, version, &target.plural)
        .await?
        .ok_or_else(ApiError::path_not_found)?;
    if target.ns.is_some() && !res.namespaced {
        return Err(ApiError::path_not_found());
    }
    if let Some(sub) = &target.sub {
        if !res.subresources.contains(sub) {
            return Err(ApiError::path_not_found());
        }
    }
    if let (Some(sub @ ("exec" | "attach")), Some(name)) = (target.sub.as_deref(), target.name.as_deref()) {
        let attach = sub == "attach";
        let pod = state
            .objects
            .get(&res, target.ns.as_deref(), name)
            .await
            .map_err(|e| ApiError::from_objects(e, &res, name))?
            .ok_or_else(|| ApiError::not_found(&res, name))?;
        if let Some(phase @ ("Succeeded" | "Failed")) = pod["status"]["phase"].as_str() {
            return Err(ApiError::bad_request(format!(
                "cannot exec into a container in a completed pod; current phase is {phase}"
            )));
        }
        let streams = state.streams.clone().ok_or_else(|| ApiError::unavailable("node agent not available"))?;
        let opts = exec::options(req.uri(), &pod, attach)?;
        let (parts, _) = req.into_parts();
        return exec::serve(parts, streams, pod, opts, attach).await;
    }
    if let (Some("portforward"), Some(name)) = (target.sub.as_deref(), target.name.as_deref()) {
        if !matches!(method, Method::GET | Method::POST) {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({method})"
            )));
        }
        let pod = state
            .objects
            .get(&res, target.ns.as_deref(), name)
            .await
            .map_err(|e| ApiError::from_objects(e, &res, name))?
            .ok_or_else(|| ApiError::not_found(&res, name))?;
        if let Some(phase @ ("Succeeded" | "Failed")) = pod["status"]["phase"].as_str() {
            return Err(ApiError::bad_request(format!(
                "cannot forward ports of a completed pod; current phase is {phase}"
            )));
        }
        let streams = state.streams.clone().ok_or_else(|| ApiError::unavailable("node agent not available"))?;
        return portforward::serve(req, streams, pod, state.shutdown.clone()).await;
    }
    if let (Some("proxy"), Some(name)) = (target.sub.as_deref(), target.name.as_deref()) {
        return proxy::serve(state, &res, target.ns.as_deref(), name, req).await;
    }
    let query: HashMap<String, String> =
        Query::<HashMap<String, String>>::try_from_uri(req.uri()).map(|q| q.0).unwrap_or_default();
    let accept = header_str(req.headers(), header::ACCEPT);
    let content_type = header_str(req.headers(), header::CONTENT_TYPE);
    let user = req.extensions().get::<Arc<UserInfo>>().cloned();
    let user_agent = header_str(req.headers(), header::USER_AGENT);
    let needs_body = matches!(method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE);
    let body = if needs_body { read_body(req.into_body(), state.max_body_bytes).await? } else { bytes::Bytes::new() };
    let ctx = Ctx {
        state,
        res,
        ns: target.ns,
        name: target.name,
        sub: target.sub,
        query,
        accept,
        content_type,
        body,
        user,
        user_agent,
    };
    if ctx.res.group == events_v1::GROUP {
        return events_v1::serve(ctx, method).await;
    }
    if ctx.res.group == apiservice::GROUP {
        return apiservice::serve(ctx, method).await;
    }
    let sub = ctx.sub.clone();
    match (method.clone(), ctx.name.is_some(), sub.as_deref()) {
        (Method::GET, false, None) if ctx.flag("watch") => watch::watch(ctx).await,
        (Method::GET, false, None) => crud::list(&ctx).await,
        (Method::POST, false, None) => crud::create(&ctx).await,
        (Method::DELETE, false, None) => crud::delete_collection(&ctx).await,
        (Method::GET, true, None | Some("status" | "approval")) => crud::get(&ctx).await,
        (Method::PUT, true, None | Some("status" | "approval")) => crud::update(&ctx).await,
        (Method::PATCH, true, None | Some("status" | "approval")) => crud::patch(&ctx).await,
        (Method::DELETE, true, None) => crud::delete(&ctx).await,
        (Method::GET, true, Some("scale")) => ok(scale::get(&ctx).await?),
        (Method::PUT, true, Some("scale")) => ok(scale::write(&ctx, None).await?),
        (Method::PATCH, true, Some("scale")) => {
            let kind = PatchKind::from_content_type(&ctx.content_type)
                .ok_or_else(|| ApiError::unsupported_media(&ctx.content_type))?;
            ok(scale::write(&ctx, Some(kind)).await?)
        }
        (Method::GET | Method::PUT | Method::PATCH, true, Some("ephemeralcontainers")) => {
            ephemeral::serve(&ctx, method).await
        }
        (Method::GET, true, Some("log")) => pod::logs(&ctx).await,
        (Method::POST, true, Some("binding")) => Ok(json_response(StatusCode::CREATED, &pod::bind(&ctx).await?)),
        (Method::POST, true, Some("eviction")) => crud::delete(&ctx).await,
        (Method::POST, true, Some("token")) => token_request::create(&ctx).await,
        (Method::PUT, true, Some("finalize")) => ok(namespace::finalize(&ctx).await?),
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method})"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Parsed = (Option<String>, String, Option<String>, Option<String>);

    fn p(s: &str) -> Option<Parsed> {
        let rest: Vec<String> = s.split('/').filter(|x| !x.is_empty()).map(String::from).collect();
        parse_target(&rest).map(|t| (t.ns, t.plural, t.name, t.sub))
    }

    #[test]
    fn paths() {
        assert_eq!(
            p("namespaces/default/pods/web/log"),
            Some((Some("default".into()), "pods".into(), Some("web".into()), Some("log".into())))
        );
        assert_eq!(p("namespaces/demo"), Some((None, "namespaces".into(), Some("demo".into()), None)));
        assert_eq!(
            p("namespaces/demo/finalize"),
            Some((None, "namespaces".into(), Some("demo".into()), Some("finalize".into())))
        );
        assert_eq!(p("nodes"), Some((None, "nodes".into(), None, None)));
        assert_eq!(
            p("namespaces/default/deployments"),
            Some((Some("default".into()), "deployments".into(), None, None))
        );
    }
}
