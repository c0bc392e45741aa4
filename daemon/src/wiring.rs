//! Starts the components of a running node and moves the leader-only ones with leadership.
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cluster::{Node, NodeRecord};

/// Runs every component of the node until `stop`.
pub(crate) async fn run_services(node: Arc<Node>, stop: CancellationToken) {
    let tasks = tokio_util::task::TaskTracker::new();
    tasks.spawn(register_self(node.clone(), stop.clone()));
    tasks.spawn(leader_duties(node.clone(), stop.clone()));
    tasks.close();
    stop.cancelled().await;
    tasks.wait().await;
}

/// Writes this node's record into the store once (retrying until a leader takes it).
async fn register_self(node: Arc<Node>, stop: CancellationToken) {
    let rec = NodeRecord::of(&node.identity);
    let mut wait = Duration::from_millis(100);
    loop {
        match crate::cluster::peers::put_record(&node.store, &rec).await {
            Ok(()) => return,
            Err(e) => tracing::debug!(error = %e, "registering node record; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

/// Runs the controllers and the scheduler while this node leads, and stops them within a
/// poll interval of losing leadership.
async fn leader_duties(node: Arc<Node>, stop: CancellationToken) {
    let mut current: Option<CancellationToken> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let leading = node.store.status().leader == Some(node.identity.node_id);
        match (leading, current.is_some()) {
            (true, false) => {
                tracing::info!("became leader: starting controllers and scheduler");
                let token = stop.child_token();
                start_leader_components(&node, token.clone());
                current = Some(token);
            }
            (false, true) => {
                tracing::info!("lost leadership: stopping controllers and scheduler");
                if let Some(t) = current.take() {
                    t.cancel();
                }
            }
            _ => {}
        }
    }
    if let Some(t) = current.take() {
        t.cancel();
    }
}

fn start_leader_components(_node: &Arc<Node>, _token: CancellationToken) {}

/// An admin kubeconfig for this cluster (client certificate for user `admin`, group
/// `system:masters`).
pub(crate) fn kubeconfig(node: &Node, server: Option<String>) -> Result<String, String> {
    let server = server.unwrap_or_else(|| format!("https://{}:{}", node.identity.advertise, node.identity.api_port));
    let cert = node.secrets.issue_client_cert("admin", &["system:masters"]).map_err(|e| e.to_string())?;
    Ok(crate::api::kubeconfig(&server, &node.secrets.ca_cert_pem, &cert.cert_pem, &cert.key_pem))
}

/// Which node announces each LoadBalancer IP (empty until the load balancer runs).
pub(crate) async fn lb_status(_node: &Node) -> serde_json::Value {
    serde_json::Value::Array(Vec::new())
}
