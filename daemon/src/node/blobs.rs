//! Image blobs between nodes: a node pulling an image asks its live peers for each layer before
//! the registry (a fleet behind one slow uplink downloads a layer once), and serves the blobs it
//! holds to them. Served over the peer transport (mutual TLS, nodes only) as the raw-stream
//! service [`SERVICE`]: the opener sends `{"digest": ...}`; the answer is one byte (1: here it
//! comes, 0: not here) and then the blob's bytes until the stream ends. The puller checks the
//! digest of what it receives (shoal-images), so a peer is never trusted.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use shoal_gossip::{PeerInfo, Transport};
use shoal_images::{BlobSource, BlobStream, ImageStore};

/// The transport service serving image blobs.
pub const SERVICE: &str = "image-blobs";
/// How long a peer may take to say whether it has a blob.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
const CHUNK: usize = 64 * 1024;

#[derive(Debug, Serialize, Deserialize)]
struct BlobRequest {
    digest: String,
}

/// Serves this node's blobs to its peers.
pub fn serve(transport: &Transport, store: ImageStore) {
    transport.register_stream(
        SERVICE,
        Arc::new(move |peer: PeerInfo, header: Vec<u8>, mut send, _recv| {
            let store = store.clone();
            Box::pin(async move {
                if !peer.organizations.iter().any(|o| o == "system:nodes") {
                    tracing::warn!(peer = %peer.node_name, "image blob refused: not a node");
                    let _ = send.finish();
                    return;
                }
                let blob = match serde_json::from_slice::<BlobRequest>(&header) {
                    Ok(req) => store.read_blob(&req.digest).await.ok().flatten(),
                    Err(_) => None,
                };
                let Some(mut blob) = blob else {
                    let _ = send.write_all(&[0]).await;
                    let _ = send.finish();
                    return;
                };
                if send.write_all(&[1]).await.is_err() {
                    return;
                }
                while let Some(chunk) = blob.next().await {
                    match chunk {
                        Ok(bytes) => {
                            if send.write_all(&bytes).await.is_err() {
                                return;
                            }
                        }
                        // Resetting the stream makes the puller see an error, not a short blob.
                        Err(_) => {
                            let _ = send.reset(0u32.into());
                            return;
                        }
                    }
                }
                let _ = send.finish();
            })
        }),
    );
}

/// The live peers' peer addresses, asked at every blob.
pub type PeerList = Arc<dyn Fn() -> Vec<SocketAddr> + Send + Sync>;

/// Asks the live peers, in turn, for a blob.
pub struct QuicPeers {
    pub transport: Transport,
    pub peers: PeerList,
}

impl std::fmt::Debug for QuicPeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicPeers").finish_non_exhaustive()
    }
}

impl BlobSource for QuicPeers {
    fn open<'a>(&'a self, digest: &'a str, _size: u64) -> BoxFuture<'a, shoal_images::Result<Option<BlobStream>>> {
        Box::pin(async move {
            let header = serde_json::to_vec(&BlobRequest { digest: digest.to_string() }).unwrap_or_default();
            for addr in (self.peers)() {
                let Ok((_send, mut recv)) = self.transport.open_stream(addr, SERVICE, header.clone()).await else {
                    continue;
                };
                let mut answer = [0u8; 1];
                match tokio::time::timeout(ANSWER_TIMEOUT, recv.read_exact(&mut answer)).await {
                    Ok(Ok(())) if answer[0] == 1 => {}
                    _ => continue,
                }
                tracing::debug!(%addr, %digest, "fetching a blob from a peer");
                let stream = futures::stream::unfold(Some(recv), |state| async move {
                    let mut recv = state?;
                    match recv.read_chunk(CHUNK, true).await {
                        Ok(Some(chunk)) => Some((Ok::<Bytes, std::io::Error>(chunk.bytes), Some(recv))),
                        Ok(None) => None,
                        Err(e) => Some((Err(std::io::Error::other(e)), None)),
                    }
                });
                return Ok(Some(Box::pin(stream) as BlobStream));
            }
            Ok(None)
        })
    }
}
