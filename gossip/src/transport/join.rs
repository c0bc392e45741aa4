//! Joining a cluster with a token (ALPN `shoal-join/1`).
//!
//! The joiner pins the server's CA by the hash inside the token (trust on first use, as
//! kubeadm's discovery hash), then sends the token's secret, its name and IPs. The node that
//! holds the CA key (the leader; a node without it forwards the request there, see
//! [`super::JoinForward`]) checks the secret and answers with the node's own certificate
//! (`system:node:NAME`) and the cluster secrets WITHOUT the CA private key.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, VarInt};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::{frame, read_lock, tls, Inner, CLOSE_DONE};
use crate::error::{Error, Result};
use crate::pki::{load_certs, ClusterSecrets, JoinToken, NodeTls, PEER_SERVER_NAME};

/// Largest join request a server reads (it comes from a peer not yet authenticated).
const MAX_JOIN_REQUEST: usize = 64 * 1024;
/// Largest join reply a joiner reads.
const MAX_JOIN_REPLY: usize = 16 * 1024 * 1024;
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);

/// What a joining node says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub name: String,
    pub ips: Vec<IpAddr>,
}

/// What an admitted node receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinBundle {
    pub secrets: ClusterSecrets,
    pub node_cert_pem: String,
    pub node_key_pem: String,
    /// Filled by the answering node's [`super::JoinHook`] (cluster id, peer addresses, ...).
    pub extra: Vec<u8>,
}

impl JoinBundle {
    /// The CA and node certificate for [`super::Transport::bind`].
    pub fn node_tls(&self) -> NodeTls {
        NodeTls {
            ca_cert_pem: self.secrets.ca_cert_pem.clone(),
            cert_pem: self.node_cert_pem.clone(),
            key_pem: self.node_key_pem.clone(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct JoinWire {
    secret: String,
    request: JoinRequest,
}

#[derive(Serialize, Deserialize)]
enum JoinReply {
    Accepted(Box<JoinBundle>),
    Refused(String),
}

/// Joins the cluster of the node at `addr`. A bad token comes back as
/// [`Error::JoinRefused`], whose message reads "join refused: invalid join token".
pub async fn join(addr: SocketAddr, token: &str, request: JoinRequest) -> Result<JoinBundle> {
    let token = JoinToken::parse(token)?;
    let transport = tls::quic_transport_config(JOIN_TIMEOUT, Duration::from_secs(2))?;
    let client_config = tls::join_client_config(&token, transport)?;
    let bind: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let endpoint = quinn::Endpoint::client(bind).map_err(|source| Error::Bind { addr: bind, source })?;
    let result = tokio::time::timeout(JOIN_TIMEOUT, exchange(&endpoint, client_config, addr, &token, request)).await;
    endpoint.close(VarInt::from_u32(CLOSE_DONE), b"");
    let bundle = result.map_err(|_| Error::Timeout { addr, service: "join".to_string(), after: JOIN_TIMEOUT })??;
    let ca = load_certs(&bundle.secrets.ca_cert_pem, "CA certificate")?;
    if !ca.first().is_some_and(|der| token.matches_ca(der.as_ref())) {
        return Err(Error::JoinRefused { message: "the answering node's CA does not match the token".to_string() });
    }
    Ok(bundle)
}

async fn exchange(
    endpoint: &quinn::Endpoint,
    client_config: quinn::ClientConfig,
    addr: SocketAddr,
    token: &JoinToken,
    request: JoinRequest,
) -> Result<JoinBundle> {
    let conn = endpoint
        .connect_with(client_config, addr, PEER_SERVER_NAME)
        .map_err(|source| Error::Connect { addr, source })?
        .await
        .map_err(|source| Error::Handshake { addr, source })?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|source| Error::OpenStream { addr, source })?;
    let wire = serde_json::to_vec(&JoinWire { secret: token.secret.clone(), request }).map_err(Error::EncodeJoin)?;
    frame::write_frame(&mut send, addr, &[&wire]).await?;
    let _ = send.finish();
    let reply = frame::read_frame(&mut recv, addr, MAX_JOIN_REPLY).await?;
    conn.close(VarInt::from_u32(CLOSE_DONE), b"");
    match serde_json::from_slice::<JoinReply>(&reply).map_err(|source| Error::DecodeJoin { addr, source })? {
        JoinReply::Accepted(bundle) => Ok(*bundle),
        JoinReply::Refused(message) => Err(Error::JoinRefused { message }),
    }
}

/// Serves the one join request of a `shoal-join/1` connection, then closes it.
pub(super) async fn serve_join(inner: &Arc<Inner>, conn: Connection) {
    let remote = conn.remote_address();
    let served = tokio::time::timeout(JOIN_TIMEOUT, serve_join_request(inner, &conn)).await;
    match served {
        Ok(Ok(())) => {
            // Let the joiner read the reply and close first; it owns the end of the exchange.
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
        }
        Ok(Err(error)) => debug!(peer = %remote, %error, "join exchange failed"),
        Err(_) => debug!(peer = %remote, "join exchange timed out"),
    }
    conn.close(VarInt::from_u32(CLOSE_DONE), b"");
}

async fn serve_join_request(inner: &Arc<Inner>, conn: &Connection) -> Result<()> {
    let remote = conn.remote_address();
    let (mut send, mut recv) = conn.accept_bi().await.map_err(|source| Error::OpenStream { addr: remote, source })?;
    let request = frame::read_frame(&mut recv, remote, MAX_JOIN_REQUEST).await?;
    let forward = read_lock(&inner.join_forward).clone();
    let forwarded = match forward {
        Some(forward) => forward(request.clone(), remote).await,
        None => None,
    };
    let reply = match forwarded {
        Some(reply) => reply,
        None => serde_json::to_vec(&decide(inner, remote, &request).await).map_err(Error::EncodeJoin)?,
    };
    frame::write_frame(&mut send, remote, &[&reply]).await?;
    let _ = send.finish();
    Ok(())
}

/// Answers a join request here (a forwarded one, or one to this node): the reply's bytes.
pub(super) async fn answer(inner: &Arc<Inner>, remote: SocketAddr, request: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&decide(inner, remote, request).await).unwrap_or_default()
}

/// The bytes of a reply refusing a join with `message`.
pub fn refusal(message: &str) -> Vec<u8> {
    serde_json::to_vec(&JoinReply::Refused(message.to_string())).unwrap_or_default()
}

async fn decide(inner: &Arc<Inner>, remote: SocketAddr, request: &[u8]) -> JoinReply {
    let Ok(wire) = serde_json::from_slice::<JoinWire>(request) else {
        warn!(peer = %remote, "malformed join request");
        return JoinReply::Refused("malformed join request".to_string());
    };
    let service = read_lock(&inner.join).clone();
    let Some(service) = service else {
        return JoinReply::Refused("this node does not accept joins".to_string());
    };
    if !valid_node_name(&wire.request.name) {
        return JoinReply::Refused(format!(
            "invalid node name {:?}: use lowercase letters, digits, '-' and '.'",
            wire.request.name
        ));
    }
    if !service.secrets.has_ca_key() {
        // Checked before the token, so no use of it is recorded for a join that cannot finish.
        warn!(peer = %remote, node = %wire.request.name, "join refused: this node holds no CA key");
        return JoinReply::Refused(
            "the answering node cannot sign certificates (it holds no CA key); retry".to_string(),
        );
    }
    let check = read_lock(&inner.token_check).clone();
    match check {
        Some(check) => {
            if let Err(message) = check(wire.secret.clone(), wire.request.clone(), remote).await {
                warn!(peer = %remote, node = %wire.request.name, %message, "join refused");
                return JoinReply::Refused(message);
            }
        }
        None if !service.secrets.verify_token_secret(&wire.secret) => {
            warn!(peer = %remote, node = %wire.request.name, "join refused: invalid join token");
            return JoinReply::Refused("invalid join token".to_string());
        }
        None => {}
    }
    let extra = match &service.hook {
        Some(hook) => match hook(wire.request.clone(), remote).await {
            Ok(extra) => extra,
            Err(message) => {
                warn!(peer = %remote, node = %wire.request.name, %message, "join refused by the daemon");
                return JoinReply::Refused(message);
            }
        },
        None => Vec::new(),
    };
    let issued = match service.secrets.issue_node_cert(&wire.request.name, &wire.request.ips) {
        Ok(issued) => issued,
        Err(error) => {
            warn!(peer = %remote, node = %wire.request.name, %error, "issuing node certificate failed");
            return JoinReply::Refused("the answering node could not issue a certificate".to_string());
        }
    };
    info!(peer = %remote, node = %wire.request.name, "node joined");
    JoinReply::Accepted(Box::new(JoinBundle {
        // The CA key stays with the voters; a learner promoted to voter gets it over the
        // mutual-TLS peer link.
        secrets: service.secrets.without_ca_key(),
        node_cert_pem: issued.cert_pem,
        node_key_pem: issued.key_pem,
        extra,
    }))
}

/// A DNS-1123 subdomain, as Kubernetes requires of node names.
pub(crate) fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}
