//! The opt-in plain-HTTP listener for scrapers on a trusted network (`[api] metrics_listen`):
//! `GET /metrics` and nothing else (every other path is 404, other methods 405), so it never
//! exposes the API without authentication.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Exporter;

/// Where the listener binds: only when `[api] metrics_listen` is set and metrics are on.
pub(crate) fn address(metrics_listen: Option<SocketAddr>, metrics_enabled: bool) -> Option<SocketAddr> {
    metrics_listen.filter(|_| metrics_enabled)
}

/// Answers one request of the plain listener.
pub(crate) fn answer(exporter: &Exporter, req: &Request<impl Sized>) -> Response<Body> {
    let text = |code: StatusCode, msg: &'static str| {
        Response::builder()
            .status(code)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Body::from(msg))
            .unwrap_or_default()
    };
    if req.uri().path() != "/metrics" {
        return text(StatusCode::NOT_FOUND, "not found: this listener serves /metrics only\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, super::CONTENT_TYPE)
        .body(Body::from(exporter.render()))
        .unwrap_or_default()
}

/// Serves `/metrics` over plain HTTP on `listener` until `stop`.
pub(crate) async fn serve(listener: TcpListener, exporter: Arc<Exporter>, stop: CancellationToken) {
    tracing::info!(addr = ?listener.local_addr().ok(), "plain metrics listener");
    let tracker = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            acc = listener.accept() => match acc {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let exporter = exporter.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let r = answer(&exporter, &req);
                async move { Ok::<_, Infallible>(r) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tcp), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { tracing::debug!(%peer, error = %e, "metrics connection ended with an error") },
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            }
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
}

/// Binds `addr` and serves until `stop`.
pub(crate) async fn run(addr: SocketAddr, exporter: Arc<Exporter>, stop: CancellationToken) {
    match TcpListener::bind(addr).await {
        Ok(l) => serve(l, exporter, stop).await,
        Err(e) => tracing::error!(error = %e, %addr, "cannot bind the plain metrics listener"),
    }
}
