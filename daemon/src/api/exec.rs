//! `pods/exec` and `pods/attach` over WebSocket with the channel subprotocols kube-apiserver
//! speaks: every binary message starts with a channel byte (0 stdin, 1 stdout, 2 stderr, 3
//! status, 4 terminal resize). `v5.channel.k8s.io` (kubectl 1.31+, the Python client) adds 255,
//! the close of one stream (stdin's end); `v4.channel.k8s.io` (the Java, JavaScript and older
//! Python clients) has no close signal; from v4 on the status is a `Status` object, before it
//! (`channel.k8s.io`, `v2`, `v3`) a plain message written only on failure. A client that names
//! no subprotocol gets `channel.k8s.io`, as upstream. The session ends with the status on
//! channel 3 and a close frame.
use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::Response;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::status::ApiError;
use crate::streams::{ExecIo, ExecOptions, PodStreams, StreamError, TerminalSize};

/// The subprotocols served, most preferred first, with their version.
const PROTOCOLS: [(&str, u8); 5] = [
    ("v5.channel.k8s.io", 5),
    ("v4.channel.k8s.io", 4),
    ("v3.channel.k8s.io", 3),
    ("v2.channel.k8s.io", 2),
    ("channel.k8s.io", 1),
];

/// A query flag as Go's `strconv.ParseBool` reads it (the Python client sends `True`).
pub(crate) fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// The query of an exec/attach request (`command` repeats).
pub(crate) fn options(uri: &axum::http::Uri, pod: &Value, attach: bool) -> Result<ExecOptions, ApiError> {
    let mut command = Vec::new();
    let mut q: HashMap<String, String> = HashMap::new();
    for (k, v) in uri.query().unwrap_or_default().split('&').filter_map(|kv| kv.split_once('=')) {
        let v = percent_decode(v);
        if k == "command" {
            command.push(v);
        } else {
            q.insert(k.to_string(), v);
        }
    }
    for k in ["stdin", "stdout", "stderr", "tty"] {
        if let Some(v) = q.get(k) {
            if parse_bool(v).is_none() {
                return Err(ApiError::bad_request(format!("invalid value {v:?} for {k}: not a boolean")));
            }
        }
    }
    let flag = |k: &str| q.get(k).and_then(|v| parse_bool(v)).unwrap_or(false);
    let containers: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .map(|cs| cs.iter().filter_map(|c| c["name"].as_str().map(String::from)).collect())
        .unwrap_or_default();
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    // Init and ephemeral containers (`kubectl debug` attaches to one) may be named too.
    let named = |c: &str| {
        ["containers", "initContainers", "ephemeralContainers"]
            .iter()
            .flat_map(|k| pod["spec"][*k].as_array().into_iter().flatten())
            .any(|x| x["name"].as_str() == Some(c))
    };
    let container = match q.get("container") {
        Some(c) if named(c) => c.clone(),
        Some(c) => return Err(ApiError::bad_request(format!("container {c} is not valid for pod {name}"))),
        None => {
            containers.first().cloned().ok_or_else(|| ApiError::bad_request(format!("pod {name} has no containers")))?
        }
    };
    if !attach && command.is_empty() {
        return Err(ApiError::bad_request("you must specify at least 1 command"));
    }
    Ok(ExecOptions {
        container,
        command,
        stdin: flag("stdin"),
        stdout: flag("stdout"),
        stderr: flag("stderr"),
        tty: flag("tty"),
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A text message read as the same bytes in binary, as upstream's channel reader does (the
/// Python client writes stdin given as `str` in text messages).
pub(crate) fn text_as_binary(m: Message) -> Message {
    match m {
        Message::Text(t) => Message::Binary(Bytes::from(t.as_str().as_bytes().to_vec())),
        other => other,
    }
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(Bytes::from(v))
}

/// What goes on channel 3 at the end: the Status (v4+), or before v4 a plain message on
/// failure only.
fn status_message(version: u8, result: &Result<i32, StreamError>) -> Option<Vec<u8>> {
    let status = exit_status(result);
    if version >= 4 {
        return Some(shoal_kube::wire::to_vec(&status));
    }
    status["message"].as_str().map(|m| m.as_bytes().to_vec())
}

fn exit_status(result: &Result<i32, StreamError>) -> Value {
    match result {
        Ok(0) => json!({"metadata": {}, "status": "Success"}),
        Ok(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command [...], exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(e) => json!({"metadata": {}, "status": "Failure", "message": e.to_string(), "reason": "InternalError"}),
    }
}

/// Upgrades the request and runs the session.
pub(crate) async fn serve(
    mut parts: Parts,
    streams: Arc<dyn PodStreams>,
    pod: Value,
    opts: ExecOptions,
    attach: bool,
) -> Result<Response, ApiError> {
    let ws = WebSocketUpgrade::from_request_parts(&mut parts, &()).await.map_err(|_| {
        ApiError::bad_request("Upgrade request required: exec and attach need a WebSocket (v5.channel.k8s.io)")
    })?;
    let offered = ws.requested_protocols().count() > 0;
    let ws = ws.protocols(PROTOCOLS.map(|(p, _)| p));
    let version = match ws.selected_protocol().and_then(|p| p.to_str().ok()) {
        Some(p) => PROTOCOLS.iter().find(|(name, _)| *name == p).map_or(1, |(_, v)| *v),
        None if !offered => 1,
        None => {
            let names = PROTOCOLS.map(|(p, _)| p).join(", ");
            return Err(ApiError::bad_request(format!("unsupported streaming protocol; this server speaks {names}")));
        }
    };
    Ok(ws.on_upgrade(move |socket| session(socket, streams, pod, opts, attach, version)))
}

async fn session(
    socket: WebSocket,
    streams: Arc<dyn PodStreams>,
    pod: Value,
    opts: ExecOptions,
    attach: bool,
    version: u8,
) {
    let (mut tx, mut rx) = socket.split();
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(16);
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(16);
    let (err_tx, mut err_rx) = mpsc::channel::<Bytes>(16);
    let (resize_tx, resize_rx) = mpsc::channel::<TerminalSize>(4);
    let io = ExecIo { stdin: opts.stdin.then_some(stdin_rx), stdout: out_tx, stderr: err_tx, resize: resize_rx };
    let run = if attach { streams.attach(&pod, opts, io) } else { streams.exec(&pod, opts, io) };
    tokio::pin!(run);
    let mut stdin_tx = Some(stdin_tx);
    let result = loop {
        tokio::select! {
            r = &mut run => break r,
            Some(b) = out_rx.recv() => {
                if tx.send(frame(1, &b)).await.is_err() { return; }
            }
            Some(b) = err_rx.recv() => {
                if tx.send(frame(2, &b)).await.is_err() { return; }
            }
            msg = rx.next() => match msg.map(|m| m.map(text_as_binary)) {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(Message::Ping(p))) => { let _ = tx.send(Message::Pong(p)).await; }
                Some(Ok(Message::Binary(b))) if !b.is_empty() => match b[0] {
                    0 => {
                        if let Some(s) = &stdin_tx {
                            let _ = s.send(b.slice(1..)).await;
                        }
                    }
                    4 => {
                        let v: Value = serde_json::from_slice(&b[1..]).unwrap_or_default();
                        let size = TerminalSize {
                            width: v["Width"].as_u64().unwrap_or(80) as u16,
                            height: v["Height"].as_u64().unwrap_or(24) as u16,
                        };
                        let _ = resize_tx.try_send(size);
                    }
                    255 if version >= 5 && b.get(1) == Some(&0) => stdin_tx = None,
                    _ => {}
                },
                Some(Ok(_)) => {}
            },
        }
    };
    // Whatever output is still queued goes out before the status.
    while let Ok(b) = out_rx.try_recv() {
        let _ = tx.send(frame(1, &b)).await;
    }
    while let Ok(b) = err_rx.try_recv() {
        let _ = tx.send(frame(2, &b)).await;
    }
    if let Some(status) = status_message(version, &result) {
        let _ = tx.send(frame(3, &status)).await;
    }
    // A normal closure (1000) is what client-go reads as the end of every stream.
    let _ = tx.send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() }))).await;
    // Finish the closing handshake: dropping the connection with client data unread would reset
    // it, and the client could lose the status above.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while let Some(Ok(m)) = rx.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_options() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let uri: axum::http::Uri =
            "/x?command=sh&command=-c&command=echo%20hi+there&container=b&stdin=true&tty=true".parse().unwrap();
        let o = options(&uri, &pod, false).unwrap();
        assert_eq!(o.command, ["sh", "-c", "echo hi there"]);
        assert_eq!(o.container, "b");
        assert!(o.stdin && o.tty && !o.stdout);
        let uri: axum::http::Uri = "/x?command=ls&container=zz".parse().unwrap();
        assert_eq!(options(&uri, &pod, false).unwrap_err().code, 400);
        assert_eq!(exit_status(&Ok(3))["details"]["causes"][0]["message"], "3");
        // The Python client sends Go-style booleans; nonsense is refused.
        let uri: axum::http::Uri = "/x?command=ls&stdout=True&stderr=T&stdin=False".parse().unwrap();
        let o = options(&uri, &pod, false).unwrap();
        assert!(o.stdout && o.stderr && !o.stdin);
        let uri: axum::http::Uri = "/x?command=ls&stdout=yes".parse().unwrap();
        assert_eq!(options(&uri, &pod, false).unwrap_err().code, 400);
        // Before v4 the status channel carries a message on failure only.
        assert_eq!(status_message(3, &Ok(0)), None);
        assert!(String::from_utf8(status_message(1, &Ok(2)).unwrap()).unwrap().contains("exit code 2"));
        assert_eq!(serde_json::from_slice::<Value>(&status_message(4, &Ok(0)).unwrap()).unwrap()["status"], "Success");
    }
}
