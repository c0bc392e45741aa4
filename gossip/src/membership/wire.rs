//! The gossip socket: chitchat's datagrams sealed with the cluster gossip key (see `seal`).
//!
//! chitchat 0.13 keeps its envelope codec crate-private: its `UdpSocket` is the only public
//! way to turn an envelope into bytes and back. [`EnvelopeCodec`] runs that socket over a
//! private loopback pair, so the bytes can be sealed before they reach the network and opened
//! before chitchat sees them.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, UdpSocket as ChitchatUdp};
use chitchat::{ChitchatEnvelope, ChitchatMessage, ProtocolVersion};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::LinkLoss;
use crate::seal::{Reject, Sealer};

/// chitchat's magic number, little endian, then protocol version 0 and message type 3
/// (BadCluster): the shortest valid chitchat datagram.
const BAD_CLUSTER_V0: [u8; 4] = [0x53, 0xB0, 0x00, 0x03];
const MAX_DATAGRAM: usize = 65_535;
/// A loopback datagram that has not arrived by then is lost; the codec is rebuilt.
const LOOPBACK_TIMEOUT: Duration = Duration::from_secs(1);

/// chitchat's own wire encoding, through a chitchat `UdpSocket` on loopback.
pub struct EnvelopeCodec {
    chitchat: ChitchatUdp,
    chitchat_addr: SocketAddr,
    raw: tokio::net::UdpSocket,
    raw_addr: SocketAddr,
    buf: Vec<u8>,
}

impl EnvelopeCodec {
    pub async fn new() -> anyhow::Result<Self> {
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let chitchat = ChitchatUdp::open(loopback).await?;
        let chitchat_addr = chitchat.local_addr()?;
        let raw = tokio::net::UdpSocket::bind(loopback).await.context("binding the gossip codec socket")?;
        let raw_addr = raw.local_addr()?;
        Ok(Self { chitchat, chitchat_addr, raw, raw_addr, buf: vec![0u8; MAX_DATAGRAM] })
    }

    /// The bytes chitchat sends for `envelope`.
    pub async fn encode(&mut self, envelope: ChitchatEnvelope) -> anyhow::Result<Vec<u8>> {
        self.chitchat.send(self.raw_addr, envelope).await?;
        loop {
            let (n, from) = tokio::time::timeout(LOOPBACK_TIMEOUT, self.raw.recv_from(&mut self.buf))
                .await
                .context("gossip codec: the encoded datagram did not come back")??;
            // Only our own chitchat socket is trusted on this port.
            if from == self.chitchat_addr {
                return Ok(self.buf[..n].to_vec());
            }
        }
    }

    /// The envelope in `bytes`, or `None` when they are not a chitchat datagram.
    pub async fn decode(&mut self, bytes: &[u8]) -> anyhow::Result<Option<ChitchatEnvelope>> {
        // chitchat drops an invalid datagram silently and waits for the next one, so each
        // datagram is followed by a BadCluster sentinel: getting the sentinel first means the
        // datagram was invalid. A BadCluster datagram itself is decoded here.
        if bytes.len() >= 4 && bytes[..2] == BAD_CLUSTER_V0[..2] && bytes[3] == BAD_CLUSTER_V0[3] {
            return Ok(ProtocolVersion::from_code(bytes[2])
                .map(|version| ChitchatEnvelope { version, message: ChitchatMessage::BadCluster }));
        }
        self.raw.send_to(bytes, self.chitchat_addr).await.context("gossip codec send")?;
        self.raw.send_to(&BAD_CLUSTER_V0, self.chitchat_addr).await.context("gossip codec send")?;
        let first = self.recv_ours().await?;
        if matches!(first.message, ChitchatMessage::BadCluster) {
            return Ok(None);
        }
        let sentinel = self.recv_ours().await?;
        if !matches!(sentinel.message, ChitchatMessage::BadCluster) {
            bail!("gossip codec out of step");
        }
        Ok(Some(first))
    }

    async fn recv_ours(&mut self) -> anyhow::Result<ChitchatEnvelope> {
        loop {
            let outcome = tokio::time::timeout(LOOPBACK_TIMEOUT, self.chitchat.recv())
                .await
                .context("gossip codec: the decoded datagram did not come back")??;
            if outcome.from_addr == self.raw_addr {
                return Ok(outcome.envelope);
            }
        }
    }
}

/// The socket chitchat gossips through: seals what it sends, opens what it receives.
pub(super) struct SealedSocket {
    socket: Arc<tokio::net::UdpSocket>,
    sealer: Sealer,
    loss: Arc<LinkLoss>,
    encoder: Option<EnvelopeCodec>,
    received: mpsc::Receiver<RecvOutcome>,
    reader: tokio::task::JoinHandle<()>,
}

impl SealedSocket {
    pub(super) async fn new(
        socket: tokio::net::UdpSocket,
        sealer: Sealer,
        loss: Arc<LinkLoss>,
    ) -> anyhow::Result<Self> {
        let socket = Arc::new(socket);
        let encoder = EnvelopeCodec::new().await?;
        let decoder = EnvelopeCodec::new().await?;
        // The reader runs apart so that chitchat's recv stays cancel safe (it is cancelled on
        // every gossip tick) while a datagram is halfway through the codec.
        let (tx, received) = mpsc::channel(64);
        let reader = tokio::spawn(read_loop(socket.clone(), sealer.clone(), loss.clone(), decoder, tx));
        Ok(Self { socket, sealer, loss, encoder: Some(encoder), received, reader })
    }
}

impl Drop for SealedSocket {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        if self.loss.drop_now() {
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        let encoder = match self.encoder.take() {
            Some(encoder) => encoder,
            None => EnvelopeCodec::new().await?,
        };
        let mut encoder = encoder;
        let plain = match encoder.encode(envelope).await {
            Ok(plain) => plain,
            Err(error) => {
                // Left out of step: a new codec next time.
                warn!(error = %format!("{error:#}"), "gossip encode failed");
                return Ok(SendOutcome { num_bytes_sent: 0 });
            }
        };
        self.encoder = Some(encoder);
        let datagram = self.sealer.seal(&plain);
        // A peer that is gone (ICMP unreachable, no route) is not a broken socket.
        match self.socket.send_to(&datagram, to).await {
            Ok(n) => Ok(SendOutcome { num_bytes_sent: n }),
            Err(error) => {
                debug!(peer = %to, %error, "gossip send failed");
                Ok(SendOutcome { num_bytes_sent: 0 })
            }
        }
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        self.received.recv().await.context("gossip reader stopped")
    }
}

async fn read_loop(
    socket: Arc<tokio::net::UdpSocket>,
    sealer: Sealer,
    loss: Arc<LinkLoss>,
    mut decoder: EnvelopeCodec,
    tx: mpsc::Sender<RecvOutcome>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut last_warned: Option<tokio::time::Instant> = None;
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(error) => {
                // ICMP errors of earlier sends surface here; a broken socket must not spin.
                debug!(%error, "gossip receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if loss.drop_now() {
            continue;
        }
        let plain = match sealer.open(&buf[..n]) {
            Ok(plain) => plain,
            Err(reject) => {
                // One line per 10 s at most: a flood must not flood the journal.
                if last_warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                    last_warned = Some(tokio::time::Instant::now());
                    warn!(from = %from, reason = reject_reason(reject), dropped = sealer.stats().dropped, "gossip datagram dropped");
                }
                continue;
            }
        };
        let envelope = match decoder.decode(&plain).await {
            Ok(Some(envelope)) => envelope,
            Ok(None) => {
                debug!(from = %from, "verified gossip datagram is not a chitchat message");
                continue;
            }
            Err(error) => {
                warn!(error = %format!("{error:#}"), "gossip decode failed; rebuilding the codec");
                match EnvelopeCodec::new().await {
                    Ok(fresh) => decoder = fresh,
                    Err(error) => {
                        warn!(error = %format!("{error:#}"), "gossip codec");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                continue;
            }
        };
        if tx.send(RecvOutcome { from_addr: from, envelope, num_bytes_received: n }).await.is_err() {
            return;
        }
    }
}

fn reject_reason(reject: Reject) -> &'static str {
    match reject {
        Reject::Plaintext => "not sealed with the gossip key",
        Reject::Truncated => "truncated",
        Reject::UnknownKey(_) => "unknown gossip key id",
        Reject::BadTag => "does not verify under the gossip key",
    }
}
