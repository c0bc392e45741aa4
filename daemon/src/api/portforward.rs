//! `pods/portforward`: SPDY/3.1 sessions, either tunnelled in the binary messages of a WebSocket
//! (subprotocol `SPDY/3.1+portforward.k8s.io`, what kubectl 1.31+ asks for first) or on the raw
//! connection after `POST` with `Upgrade: SPDY/3.1` (its fallback); and the WebSocket channel
//! form the client libraries use (`v4.channel.k8s.io`, or no subprotocol), see [`channels`].
//!
//! Per forwarded connection the client opens an error stream and a data stream carrying the
//! same `requestid` and the pod's `port`. Each stream is answered with a SYN_REPLY at once;
//! the data stream is relayed to the pod's port through [`PodStreams::port_forward`] (which
//! reaches the node that runs the pod). The pod side closing ends the data stream with FIN,
//! then the error stream with FIN; a failure is written on the error stream first.
use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::FromRequestParts;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::spdy::{self, Frame, HeaderCodec};
use super::status::ApiError;
use crate::streams::{PodStreams, PortConnection};

/// The WebSocket subprotocol of port-forward.
pub(crate) const WS_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// The WebSocket subprotocol of the channel form (two channels per port).
const CHANNEL_PROTOCOL: &str = "v4.channel.k8s.io";
/// At most this many ports in one channel-form request (channel numbers are one byte).
const MAX_CHANNEL_PORTS: usize = 64;
/// Streams open at once on one SPDY connection (an error and a data stream per forwarded
/// connection); a new one beyond is refused with RST_STREAM, as HTTP/2's stream cap.
const MAX_SPDY_STREAMS: usize = 1000;
/// The stream protocol negotiated on the SPDY upgrade.
const STREAM_PROTOCOL: &str = "portforward.k8s.io";
/// DATA frames sent to the client carry at most this many bytes.
const CHUNK: usize = 32 * 1024;

fn header_has(req: &Request<Body>, name: header::HeaderName, token: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(token))
}

/// Upgrades the request (WebSocket or SPDY) and runs the session.
pub(crate) async fn serve(
    mut req: Request<Body>,
    streams: Arc<dyn PodStreams>,
    pod: Value,
    shutdown: CancellationToken,
) -> Result<Response, ApiError> {
    if header_has(&req, header::UPGRADE, "websocket") {
        let (mut parts, _) = req.into_parts();
        let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(|e| ApiError::bad_request(format!("port-forward WebSocket upgrade: {e}")))?;
        let offered = ws.requested_protocols().count() > 0;
        let ws = ws.protocols([WS_PROTOCOL, CHANNEL_PROTOCOL]);
        let selected = ws.selected_protocol().and_then(|p| p.to_str().ok()).map(String::from);
        return match selected.as_deref() {
            Some(WS_PROTOCOL) => Ok(ws.on_upgrade(move |socket| websocket(socket, streams, pod, shutdown))),
            Some(_) => {
                let ports = channel_ports(parts.uri.query().unwrap_or_default())?;
                Ok(ws.on_upgrade(move |socket| channels(socket, streams, pod, ports, shutdown)))
            }
            None if !offered => {
                let ports = channel_ports(parts.uri.query().unwrap_or_default())?;
                Ok(ws.on_upgrade(move |socket| channels(socket, streams, pod, ports, shutdown)))
            }
            None => Err(ApiError::bad_request(format!(
                "unsupported port-forward protocol; this server speaks {WS_PROTOCOL} and {CHANNEL_PROTOCOL}"
            ))),
        };
    }
    if header_has(&req, header::UPGRADE, "SPDY/3.1") {
        if !header_has(&req, header::HeaderName::from_static("x-stream-protocol-version"), STREAM_PROTOCOL) {
            return Err(ApiError::forbidden(format!(
                "unable to upgrade: the client must offer the stream protocol {STREAM_PROTOCOL}"
            )));
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let (r, w) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
                    session(r, w, streams, pod, shutdown).await;
                }
                Err(e) => debug!(error = %e, "port-forward upgrade failed"),
            }
        });
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        h.insert("x-stream-protocol-version", HeaderValue::from_static(STREAM_PROTOCOL));
        return Ok(resp);
    }
    Err(ApiError::bad_request(format!(
        "Upgrade request required: port-forward needs a WebSocket ({WS_PROTOCOL}) or SPDY/3.1"
    )))
}

/// Runs a session over the byte stream carried by the WebSocket's binary messages.
async fn websocket(socket: WebSocket, streams: Arc<dyn PodStreams>, pod: Value, shutdown: CancellationToken) {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (r, w) = tokio::io::split(ours);
    let (mut from_ws, mut to_session) = tokio::io::split(theirs);
    let (mut tx, mut rx) = socket.split();
    let inbound = async move {
        while let Some(msg) = rx.next().await {
            match msg {
                Ok(Message::Binary(b)) => {
                    if to_session.write_all(&b).await.is_err() {
                        break;
                    }
                }
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = to_session.shutdown().await;
    };
    let outbound = async move {
        let mut buf = vec![0u8; CHUNK + 64];
        loop {
            match from_ws.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() }))).await;
    };
    tokio::join!(session(r, w, streams, pod, shutdown), inbound, outbound);
}

/// The ports of a channel-form request: `ports` (repeated, or comma-separated), each 1–65535.
fn channel_ports(query: &str) -> Result<Vec<u16>, ApiError> {
    let mut ports = Vec::new();
    for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
        if k != "ports" {
            continue;
        }
        let v = v.replace("%2C", ",").replace("%2c", ",");
        for p in v.split(',') {
            match p.trim().parse::<u16>() {
                Ok(port) if port > 0 => {
                    if !ports.contains(&port) {
                        ports.push(port);
                    }
                }
                _ => return Err(ApiError::bad_request(format!("unable to parse {p:?} as a port (1-65535)"))),
            }
        }
    }
    if ports.is_empty() {
        return Err(ApiError::bad_request("query parameter \"ports\" is required"));
    }
    if ports.len() > MAX_CHANNEL_PORTS {
        return Err(ApiError::bad_request(format!("at most {MAX_CHANNEL_PORTS} ports can be forwarded at once")));
    }
    Ok(ports)
}

fn channel_frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(Bytes::from(v))
}

/// The channel form, as the kubelet serves it behind kube-apiserver: port `i` of the request
/// gets data channel `2i` and error channel `2i+1`; each channel first carries the port number
/// (two bytes, little-endian). Every port is connected to once, at the start; a failure is
/// written on its error channel. The WebSocket closes once every port's connection has ended
/// (the pod side closed), and closing it ends them all.
async fn channels(
    socket: WebSocket,
    streams: Arc<dyn PodStreams>,
    pod: Value,
    ports: Vec<u16>,
    shutdown: CancellationToken,
) {
    let (mut tx, mut rx) = socket.split();
    for (i, port) in ports.iter().enumerate() {
        for channel in [2 * i, 2 * i + 1] {
            if tx.send(channel_frame(channel as u8, &port.to_le_bytes())).await.is_err() {
                return;
            }
        }
    }
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(64);
    let mut to_pod = Vec::with_capacity(ports.len());
    let mut relays: JoinSet<()> = JoinSet::new();
    for (i, port) in ports.iter().enumerate() {
        let (in_tx, in_rx) = mpsc::channel::<Bytes>(16);
        to_pod.push(Some(in_tx));
        relays.spawn(relay_channel(i as u8, *port, in_rx, out_tx.clone(), streams.clone(), pod.clone()));
    }
    drop(out_tx);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if tx.send(m).await.is_err() {
                return None;
            }
        }
        let _ = tx.send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() }))).await;
        Some(tx)
    });
    let mut client_closed = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            done = relays.join_next(), if !relays.is_empty() => {
                if done.is_none() || relays.is_empty() { break; }
            }
            msg = rx.next() => match msg.map(|m| m.map(super::exec::text_as_binary)) {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => { client_closed = true; break; }
                Some(Ok(Message::Binary(b))) if !b.is_empty() => {
                    let channel = b[0] as usize;
                    // Data for a port goes to its connection; the error channels are the server's.
                    if channel.is_multiple_of(2) {
                        if let Some(slot) = to_pod.get_mut(channel / 2) {
                            if let Some(s) = slot {
                                if s.send(b.slice(1..)).await.is_err() {
                                    *slot = None;
                                }
                            }
                        }
                    }
                }
                Some(Ok(_)) => {}
            },
        }
    }
    drop(to_pod);
    relays.abort_all();
    while relays.join_next().await.is_some() {}
    let _ = writer.await;
    if !client_closed {
        // Finish the closing handshake so the client reads everything sent before the close.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while let Some(Ok(m)) = rx.next().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// Relays port `index` of a channel-form session to the pod; ends when the pod side closes.
async fn relay_channel(
    index: u8,
    port: u16,
    mut from_client: mpsc::Receiver<Bytes>,
    out: mpsc::Sender<Message>,
    streams: Arc<dyn PodStreams>,
    pod: Value,
) {
    let (data, error) = (2 * index, 2 * index + 1);
    let PortConnection { mut read, mut write } = match streams.port_forward(&pod, port).await {
        Ok(c) => c,
        Err(e) => {
            let _ = out.send(channel_frame(error, e.to_string().as_bytes())).await;
            return;
        }
    };
    let up = async move {
        while let Some(b) = from_client.recv().await {
            if write.write_all(&b).await.is_err() {
                return;
            }
        }
        let _ = write.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match read.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => {
                    if out.send(channel_frame(data, &buf[..n])).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let message = format!("error reading from port {port}: {e}");
                    let _ = out.send(channel_frame(error, message.as_bytes())).await;
                    return;
                }
            }
        }
    };
    // The pod side closing ends the port, as with the kubelet: whatever the client still
    // sends for it is dropped.
    tokio::select! {
        _ = down => {}
        _ = async { up.await; std::future::pending::<()>().await } => {}
    }
}

/// One forwarded connection: the data stream and (when the client opened one) its error stream.
struct Forward {
    data: u32,
    error: Option<u32>,
    port: u16,
}

/// Serves one SPDY connection until the client closes it (or the server stops).
pub(crate) async fn session<R, W>(
    mut r: R,
    mut w: W,
    streams: Arc<dyn PodStreams>,
    pod: Value,
    shutdown: CancellationToken,
) where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            if w.write_all(&frame).await.is_err() || w.flush().await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    });
    let mut codec = match HeaderCodec::new() {
        Ok(c) => c,
        Err(e) => {
            debug!(error = %e, "port-forward header codec");
            return;
        }
    };
    // requestid → error stream, for the data stream that follows.
    let mut error_streams: HashMap<String, u32> = HashMap::new();
    // data stream → the bytes the client sends on it (dropped on FIN).
    let mut inbound: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut task_of: HashMap<u32, tokio::task::AbortHandle> = HashMap::new();
    loop {
        let frame = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            f = spdy::read_frame(&mut r) => f,
        };
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                debug!(error = %e, "port-forward connection failed");
                break;
            }
        };
        match frame {
            Frame::Control { kind: spdy::SYN_STREAM, flags, data } => {
                let Some(id) = spdy::stream_id(&data) else { break };
                let headers = match data.get(10..).map(|b| codec.decode(b)) {
                    Some(Ok(h)) => h,
                    _ => {
                        debug!(stream = id, "port-forward stream with unreadable headers");
                        break;
                    }
                };
                // (Refused only after its headers were read: the header compression context
                // runs across every block of the connection.)
                if tasks.len() + error_streams.len() >= MAX_SPDY_STREAMS {
                    debug!(stream = id, "port-forward stream refused: too many open streams");
                    if out_tx.send(spdy::rst_stream(id, spdy::STATUS_REFUSED)).await.is_err() {
                        break;
                    }
                    continue;
                }
                if task_of.len() >= MAX_SPDY_STREAMS {
                    task_of.retain(|_, h| !h.is_finished());
                }
                let get = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
                let Ok(reply) = codec.encode(&[]) else { break };
                let mut payload = id.to_be_bytes().to_vec();
                payload.extend_from_slice(&reply);
                if out_tx.send(spdy::control_frame(spdy::SYN_REPLY, 0, &payload)).await.is_err() {
                    break;
                }
                match get("streamtype").as_str() {
                    "error" => {
                        error_streams.insert(get("requestid"), id);
                    }
                    "data" => {
                        let error = error_streams.remove(&get("requestid"));
                        let (tx, rx) = mpsc::channel::<Bytes>(16);
                        if flags & spdy::FLAG_FIN == 0 {
                            inbound.insert(id, tx);
                        }
                        let port = get("port").parse::<u16>().unwrap_or(0);
                        let fwd = Forward { data: id, error, port };
                        let handle = tasks.spawn(forward(fwd, rx, out_tx.clone(), streams.clone(), pod.clone()));
                        task_of.insert(id, handle);
                    }
                    other => {
                        debug!(stream = id, streamtype = other, "port-forward stream of unknown type refused");
                        let _ = out_tx.send(spdy::rst_stream(id, spdy::STATUS_REFUSED)).await;
                    }
                }
            }
            Frame::Data { stream, flags, data } => {
                if !data.is_empty() {
                    if let Some(tx) = inbound.get(&stream) {
                        // A full queue holds the reading back: the pod sets the pace.
                        if tx.send(Bytes::from(data)).await.is_err() {
                            inbound.remove(&stream);
                        }
                    }
                }
                if flags & spdy::FLAG_FIN != 0 {
                    inbound.remove(&stream);
                }
            }
            Frame::Control { kind: spdy::RST_STREAM, data, .. } => {
                if let Some(id) = spdy::stream_id(&data) {
                    inbound.remove(&id);
                    if let Some(h) = task_of.remove(&id) {
                        h.abort();
                    }
                }
            }
            Frame::Control { kind: spdy::PING, data, .. } => {
                if out_tx.send(spdy::control_frame(spdy::PING, 0, &data)).await.is_err() {
                    break;
                }
            }
            Frame::Control { kind: spdy::GOAWAY, .. } => break,
            // SETTINGS, WINDOW_UPDATE, HEADERS: nothing to do (frames are not flow controlled).
            Frame::Control { .. } => {}
        }
    }
    tasks.abort_all();
    drop(out_tx);
    let _ = writer.await;
}

/// Relays one data stream to the pod's port.
async fn forward(
    fwd: Forward,
    mut from_client: mpsc::Receiver<Bytes>,
    out: mpsc::Sender<Vec<u8>>,
    streams: Arc<dyn PodStreams>,
    pod: Value,
) {
    let Forward { data, error, port } = fwd;
    let report = |message: String| {
        let out = out.clone();
        async move {
            if let Some(e) = error {
                if !message.is_empty() {
                    let _ = out.send(spdy::data_frame(e, 0, message.as_bytes())).await;
                }
                let _ = out.send(spdy::data_frame(e, spdy::FLAG_FIN, &[])).await;
            }
        }
    };
    let conn = if port == 0 {
        Err("invalid port: the port header must be a number between 1 and 65535".to_string())
    } else {
        streams.port_forward(&pod, port).await.map_err(|e| e.to_string())
    };
    let PortConnection { mut read, mut write } = match conn {
        Ok(c) => c,
        Err(message) => {
            let _ = out.send(spdy::data_frame(data, spdy::FLAG_FIN, &[])).await;
            report(message).await;
            return;
        }
    };
    let up = async move {
        while let Some(b) = from_client.recv().await {
            if write.write_all(&b).await.is_err() {
                return;
            }
        }
        let _ = write.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; CHUNK];
        let failure = loop {
            match read.read(&mut buf).await {
                Ok(0) => break String::new(),
                Ok(n) => {
                    if out.send(spdy::data_frame(data, 0, &buf[..n])).await.is_err() {
                        return;
                    }
                }
                Err(e) => break format!("error reading from port {port}: {e}"),
            }
        };
        let _ = out.send(spdy::data_frame(data, spdy::FLAG_FIN, &[])).await;
        report(failure).await;
    };
    tokio::join!(up, down);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_form_ports() {
        assert_eq!(channel_ports("ports=80").unwrap(), [80]);
        assert_eq!(channel_ports("ports=80%2C443&ports=8080&x=1").unwrap(), [80, 443, 8080]);
        assert_eq!(channel_ports("ports=80,80").unwrap(), [80]);
        for bad in ["", "port=80", "ports=0", "ports=70000", "ports=http", "ports=80,"] {
            assert_eq!(channel_ports(bad).unwrap_err().code, 400, "{bad}");
        }
        let many: Vec<String> = (1..=65).map(|p| format!("ports={p}")).collect();
        assert_eq!(channel_ports(&many.join("&")).unwrap_err().code, 400);
    }
}
