//! The proxy subresources: `pods/NAME[:PORT]/proxy/PATH`,
//! `services/NAME[:PORT]/proxy/PATH` and `nodes/NAME/proxy/PATH` (what `kubectl proxy` users
//! and dashboards open). RBAC has already checked `pods/proxy` (or `services/proxy`,
//! `nodes/proxy`) with the request's verb.
//!
//! A pod is reached through the node agent's port-forward path ([`PodStreams::port_forward`]):
//! the node that runs the pod connects inside the pod's network namespace, so the request can
//! only ever reach a port of that pod, whatever the name or path say. A service is proxied to
//! one of the running pods its selector picks, on the service port's `targetPort`; an
//! `ExternalName` service (an address outside the cluster) is refused. Nodes run no kubelet API:
//! `healthz` and `pods` are answered from the store, other paths are 404.
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use shoal_kube::Resource;
use tracing::debug;

use super::status::ApiError;
use super::{crud, registry, ApiState};
use crate::streams::PodStreams;

/// `[scheme:]name[:port]`, as the proxy URLs write it.
#[derive(Debug, PartialEq, Eq)]
struct Target<'a> {
    name: &'a str,
    port: &'a str,
}

fn split_name(s: &str) -> Result<Target<'_>, ApiError> {
    let parts: Vec<&str> = s.split(':').collect();
    let (scheme, name, port) = match parts.as_slice() {
        [n] => ("", *n, ""),
        [n, p] => ("", *n, *p),
        [s, n, p] => (*s, *n, *p),
        _ => return Err(ApiError::bad_request(format!("invalid proxy target {s:?}"))),
    };
    match scheme {
        "" | "http" => Ok(Target { name, port }),
        "https" => Err(ApiError::bad_request("proxying to https ports is not supported; use http")),
        other => Err(ApiError::bad_request(format!("unsupported proxy scheme {other:?}"))),
    }
}

/// The part of the request path after `.../NAME/proxy` ("/" when empty), with the query.
fn remainder(uri: &axum::http::Uri, name: &str) -> String {
    let path = uri.path();
    let marker = format!("/{name}/proxy");
    let rest = path.find(&marker).map(|i| &path[i + marker.len()..]).unwrap_or("/");
    let rest = if rest.is_empty() { "/" } else { rest };
    match uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    }
}

/// A container port of `pod` by number or by name.
fn pod_port(pod: &Value, port: &str) -> Result<u16, ApiError> {
    if port.is_empty() {
        return Ok(80);
    }
    if let Ok(n) = port.parse::<u16>() {
        return if n == 0 { Err(ApiError::bad_request("port 0 is not a valid port")) } else { Ok(n) };
    }
    let containers = pod["spec"]["containers"].as_array().into_iter().flatten();
    containers
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .find(|p| p["name"].as_str() == Some(port))
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|n| u16::try_from(n).ok())
        .ok_or_else(|| ApiError::bad_request(format!("no container port named {port:?} in pod")))
}

fn running(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running" && pod["metadata"]["deletionTimestamp"].is_null()
}

/// Entry point: `res` is pods, services or nodes; `name` the URL's name segment.
pub(crate) async fn serve(
    state: Arc<ApiState>,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let path = remainder(req.uri(), name);
    match res.plural.as_str() {
        "nodes" => node(&state, name, &path, req.method()).await,
        "pods" => {
            let t = split_name(name)?;
            let pods = registry::builtin("", "pods");
            let pod = get(&state, &pods, ns, t.name).await?;
            if !running(&pod) {
                return Err(ApiError::unavailable(format!("pod {:?} is not running", t.name)));
            }
            let port = pod_port(&pod, t.port)?;
            forward(&state, pod, port, &path, req).await
        }
        "services" => {
            let t = split_name(name)?;
            let svc = get(&state, res, ns, t.name).await?;
            let (pod, port) = service_backend(&state, &svc, ns, t).await?;
            forward(&state, pod, port, &path, req).await
        }
        _ => Err(ApiError::path_not_found()),
    }
}

async fn get(state: &ApiState, res: &Resource, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
    state
        .objects
        .get(res, ns, name)
        .await
        .map_err(|e| ApiError::from_objects(e, res, name))?
        .ok_or_else(|| ApiError::not_found(res, name))
}

/// The pod and port a service proxy request goes to.
async fn service_backend(
    state: &ApiState,
    svc: &Value,
    ns: Option<&str>,
    t: Target<'_>,
) -> Result<(Value, u16), ApiError> {
    if svc["spec"]["type"] == "ExternalName" {
        return Err(ApiError::bad_request(format!(
            "service {:?} is of type ExternalName: proxying outside the cluster is not allowed",
            t.name
        )));
    }
    let ports: Vec<&Value> = svc["spec"]["ports"].as_array().into_iter().flatten().collect();
    let sp = match t.port {
        "" if ports.len() == 1 => ports[0],
        "" => return Err(ApiError::unavailable(format!("no port given for service {:?} with several ports", t.name))),
        p => ports
            .iter()
            .copied()
            .find(|sp| {
                sp["name"].as_str() == Some(p) || sp["port"].as_u64().map(|n| n.to_string()).as_deref() == Some(p)
            })
            .ok_or_else(|| ApiError::unavailable(format!("no service port {p:?} found for service {:?}", t.name)))?,
    };
    let selector = svc["spec"]["selector"].as_object().filter(|s| !s.is_empty());
    let no_endpoints = || ApiError::unavailable(format!("no endpoints available for service {:?}", t.name));
    let selector = selector.ok_or_else(no_endpoints)?;
    let pods_res = registry::builtin("", "pods");
    let (pods, _) = state.objects.list(&pods_res, ns).await.map_err(|e| ApiError::from_objects(e, &pods_res, ""))?;
    let labels_match = |p: &Value| selector.iter().all(|(k, v)| p["metadata"]["labels"][k] == *v);
    let mut ready: Vec<Value> = pods.into_iter().filter(|p| running(p) && labels_match(p)).collect();
    ready.sort_by_key(|p| p["metadata"]["name"].as_str().unwrap_or_default().to_string());
    if ready.is_empty() {
        return Err(no_endpoints());
    }
    let pod = ready.swap_remove(rand::random::<u32>() as usize % ready.len());
    let port = match &sp["targetPort"] {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()).unwrap_or(0),
        Value::String(s) => pod_port(&pod, s)?,
        _ => sp["port"].as_u64().and_then(|n| u16::try_from(n).ok()).unwrap_or(0),
    };
    if port == 0 {
        return Err(no_endpoints());
    }
    Ok((pod, port))
}

/// Headers not passed on: hop-by-hop ones, and the client's credentials for this API.
fn dropped(name: &HeaderName) -> bool {
    let n = name.as_str();
    matches!(
        n,
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "authorization"
            | "host"
    ) || n.starts_with("impersonate-")
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from {
        if !dropped(k) {
            to.append(k.clone(), v.clone());
        }
    }
}

/// Sends the request to `port` of the pod over the node agent's port-forward path.
async fn forward(
    state: &ApiState,
    pod: Value,
    port: u16,
    path: &str,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    if req.headers().contains_key(header::UPGRADE) {
        return Err(ApiError::bad_request("upgrades (WebSocket) through the proxy subresources are not supported"));
    }
    let streams: Arc<dyn PodStreams> =
        state.streams.clone().ok_or_else(|| ApiError::unavailable("node agent not available"))?;
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let conn = streams
        .port_forward(&pod, port)
        .await
        .map_err(|e| ApiError::unavailable(format!("error trying to reach pod {pod_name:?} port {port}: {e}")))?;
    let io = TokioIo::new(tokio::io::join(conn.read, conn.write));
    let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, Body>(io)
        .await
        .map_err(|e| ApiError::unavailable(format!("error trying to reach pod {pod_name:?} port {port}: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %e, "proxy connection ended");
        }
    });
    let (parts, body) = req.into_parts();
    let mut out = Request::builder().method(parts.method.clone()).uri(path);
    if let Some(h) = out.headers_mut() {
        copy_headers(&parts.headers, h);
        if let Ok(host) = format!("{pod_name}:{port}").parse() {
            h.insert(header::HOST, host);
        }
    }
    let out = out.body(body).map_err(|e| ApiError::bad_request(format!("invalid proxy request: {e}")))?;
    let resp = sender
        .send_request(out)
        .await
        .map_err(|e| ApiError::unavailable(format!("error trying to reach pod {pod_name:?} port {port}: {e}")))?;
    let (rparts, rbody) = resp.into_parts();
    let mut r = Response::new(Body::new(rbody));
    *r.status_mut() = rparts.status;
    copy_headers(&rparts.headers, r.headers_mut());
    Ok(r)
}

/// `nodes/NAME/proxy/...`: no kubelet API; `healthz` and `pods` from the store.
async fn node(state: &ApiState, name: &str, path: &str, method: &Method) -> Result<Response, ApiError> {
    let nodes = registry::builtin("", "nodes");
    let node = get(state, &nodes, None, name).await?;
    if method != Method::GET {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method})"
        )));
    }
    let path = path.split('?').next().unwrap_or_default().trim_end_matches('/');
    match path {
        "/healthz" => {
            let ready = node["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            let (code, text) =
                if ready { (StatusCode::OK, "ok") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready") };
            Ok((code, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
        }
        "/pods" => {
            let pods_res = registry::builtin("", "pods");
            let (pods, _) =
                state.objects.list(&pods_res, None).await.map_err(|e| ApiError::from_objects(e, &pods_res, ""))?;
            let items: Vec<Value> = pods.into_iter().filter(|p| p["spec"]["nodeName"] == name).collect();
            Ok(crud::json_response(
                StatusCode::OK,
                &json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}),
            ))
        }
        _ => Err(ApiError::new(
            404,
            "NotFound",
            format!(
                "shoal nodes serve no kubelet API: only /healthz and /pods are answered through nodes/{name}/proxy"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ports_and_paths() {
        assert_eq!(split_name("web").unwrap(), Target { name: "web", port: "" });
        assert_eq!(split_name("web:80").unwrap(), Target { name: "web", port: "80" });
        assert_eq!(split_name("http:web:http").unwrap(), Target { name: "web", port: "http" });
        assert_eq!(split_name("https:web:443").unwrap_err().code, 400);
        assert_eq!(split_name("a:b:c:d").unwrap_err().code, 400);
        let uri: axum::http::Uri = "/api/v1/namespaces/d/services/web:80/proxy/a/b?x=1".parse().unwrap();
        assert_eq!(remainder(&uri, "web:80"), "/a/b?x=1");
        let uri: axum::http::Uri = "/api/v1/namespaces/d/pods/web/proxy".parse().unwrap();
        assert_eq!(remainder(&uri, "web"), "/");
        let pod = json!({"spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]}});
        assert_eq!(pod_port(&pod, "http").unwrap(), 8080);
        assert_eq!(pod_port(&pod, "").unwrap(), 80);
        assert_eq!(pod_port(&pod, "9000").unwrap(), 9000);
        assert!(pod_port(&pod, "grpc").is_err());
        assert!(pod_port(&pod, "0").is_err());
        assert!(pod_port(&pod, "70000").is_err());
    }

    #[test]
    fn credentials_and_hop_by_hop_headers_stay_here() {
        let mut from = HeaderMap::new();
        from.insert(header::AUTHORIZATION, "Bearer secret".parse().unwrap());
        from.insert("impersonate-user", "admin".parse().unwrap());
        from.insert(header::CONNECTION, "close".parse().unwrap());
        from.insert(header::ACCEPT, "text/html".parse().unwrap());
        let mut to = HeaderMap::new();
        copy_headers(&from, &mut to);
        assert_eq!(to.len(), 1);
        assert_eq!(to[header::ACCEPT], "text/html");
    }
}
