//! healthCheckNodePort servers of externalTrafficPolicy Local Services: HTTP 200 while the node
//! has a ready local endpoint, 503 otherwise, with kube-proxy's JSON body, so an outside load
//! balancer sends traffic only to nodes that can serve it.
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

type Shared = Arc<Mutex<(String, String, usize)>>;

pub(crate) struct HealthServers {
    servers: Mutex<BTreeMap<u16, (CancellationToken, Shared)>>,
    bind: IpAddr,
}

/// The HTTP response for a Service with `local` ready endpoints on this node.
pub(crate) fn response(namespace: &str, name: &str, local: usize) -> String {
    let body = json!({"service": {"namespace": namespace, "name": name}, "localEndpoints": local}).to_string();
    let status = if local > 0 { "200 OK" } else { "503 Service Unavailable" };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nX-Load-Balancing-Endpoint-Weight: {local}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

impl HealthServers {
    pub(crate) fn new(_node_ips: Vec<IpAddr>) -> HealthServers {
        HealthServers { servers: Mutex::new(BTreeMap::new()), bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED) }
    }

    /// Starts servers for new ports, stops those no longer wanted, updates the counts.
    pub(crate) fn update(&self, wanted: BTreeMap<u16, (String, String, usize)>) {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        servers.retain(|port, (stop, _)| {
            let keep = wanted.contains_key(port);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (port, state) in wanted {
            if let Some((_, shared)) = servers.get(&port) {
                *shared.lock().unwrap_or_else(|p| p.into_inner()) = state;
                continue;
            }
            let shared: Shared = Arc::new(Mutex::new(state));
            let stop = CancellationToken::new();
            tokio::spawn(serve(SocketAddr::new(self.bind, port), shared.clone(), stop.clone()));
            servers.insert(port, (stop, shared));
        }
    }

    pub(crate) fn stop_all(&self) {
        for (_, (stop, _)) in std::mem::take(&mut *self.servers.lock().unwrap_or_else(|p| p.into_inner())) {
            stop.cancel();
        }
    }
}

async fn serve(addr: SocketAddr, shared: Shared, stop: CancellationToken) {
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(%addr, error = %e, "cannot serve health check node port");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((mut conn, _)) = accepted else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut buf)).await;
            let text = {
                let s = shared.lock().unwrap_or_else(|p| p.into_inner());
                response(&s.0, &s.1, s.2)
            };
            let _ = conn.write_all(text.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}
