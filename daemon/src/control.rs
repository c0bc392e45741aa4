//! The local control socket: how `shoal status`, `shoal token`, `shoal backup` and the other
//! subcommands reach the daemon of their data dir. One JSON request line per connection,
//! answered by one JSON line. A client that sends `{"op":"session"}` first keeps the connection:
//! every further line is a request answered by one line, until the client closes (the store
//! benchmark writes this way, as etcd's clients keep their connection). The socket is root-only
//! (mode 0600) and never leaves the host.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// File name of the socket inside the data dir.
pub const SOCKET: &str = "shoal.sock";
/// Largest request accepted (a backup path, a key and a value).
const MAX_REQUEST: usize = 4 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// The token `shoal token` prints (made when the last one stopped working).
    Token,
    TokenCreate {
        /// Seconds; 0: never expires; None: 24 h.
        ttl_secs: Option<u64>,
        uses: Option<u32>,
        description: Option<String>,
    },
    TokenList,
    TokenDelete {
        id: String,
    },
    Kubeconfig {
        server: Option<String>,
        /// The user (certificate CN); None: `admin` in `system:masters`.
        #[serde(default)]
        user: Option<String>,
        /// The user's groups (certificate O).
        #[serde(default)]
        groups: Vec<String>,
        /// Certificate lifetime in seconds; None: one year.
        #[serde(default)]
        ttl_secs: Option<i64>,
    },
    /// Revoke every certificate minted for `user`, or the one with `serial`.
    KubeconfigRevoke {
        #[serde(default)]
        user: Option<String>,
        #[serde(default)]
        serial: Option<String>,
        #[serde(default)]
        reason: Option<String>,
    },
    /// The certificates on record, and the revoked ones.
    Certificates,
    KvPut {
        key: String,
        value: String,
    },
    KvGet {
        key: String,
        linearizable: bool,
    },
    Backup {
        path: PathBuf,
    },
    GossipKeyRotate,
    GossipKeyStatus,
    /// `shoal sa-key status|rotate|retire`: the ServiceAccount token signing keys.
    SaKeyStatus,
    SaKeyRotate,
    SaKeyRetire,
    SecretsEncryptStatus,
    SecretsEncryptRotate,
    /// `shoal node remove NAME`: a member leaves the cluster for good (certificates revoked,
    /// out of Raft, record and Node object deleted).
    NodeRemove {
        name: String,
    },
    /// Keep this connection open for more requests (answered `null`); only as the first line.
    Session,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply {
    Ok(serde_json::Value),
    Error(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the shoal daemon at {path} (is `shoal up` running with this --data-dir?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the daemon")]
    Io(#[from] std::io::Error),
    #[error("the daemon sent an unreadable reply")]
    Decode(#[from] serde_json::Error),
    #[error("{0}")]
    Remote(String),
}

/// What the daemon does for each request.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request) -> BoxFuture<'_, Result<serde_json::Value, String>>;
}

/// Serves the control socket until `shutdown`.
pub async fn serve(
    data_dir: &Path,
    handler: Arc<dyn Handler>,
    shutdown: CancellationToken,
) -> Result<(), ControlError> {
    let path = data_dir.join(SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|source| ControlError::Bind { path: path.clone(), source })?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let handler = handler.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_one(stream, handler).await {
                        tracing::debug!(error = %e, "control request failed");
                    }
                });
            }
        }
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

async fn serve_one(stream: UnixStream, handler: Arc<dyn Handler>) -> Result<(), ControlError> {
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r);
    let mut session = false;
    loop {
        let mut line = String::new();
        // Each request line is bounded on its own; a session does not add the limits up.
        let n = (&mut reader).take(MAX_REQUEST as u64).read_line(&mut line).await?;
        if n == 0 {
            break;
        }
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(Request::Session) if !session => {
                session = true;
                Reply::Ok(serde_json::Value::Null)
            }
            Ok(Request::Session) => Reply::Error("bad request: session already open".to_string()),
            Ok(req) => match handler.handle(req).await {
                Ok(v) => Reply::Ok(v),
                Err(e) => Reply::Error(e),
            },
            Err(e) => Reply::Error(format!("bad request: {e}")),
        };
        let mut out = serde_json::to_vec(&reply)?;
        out.push(b'\n');
        w.write_all(&out).await?;
        if !session || !line.ends_with('\n') {
            break;
        }
    }
    w.shutdown().await?;
    Ok(())
}

use tokio::io::AsyncReadExt as _;

/// Sends one request to the daemon of `data_dir` and returns its answer.
pub async fn call(data_dir: &Path, req: &Request) -> Result<serde_json::Value, ControlError> {
    let path = data_dir.join(SOCKET);
    let mut stream = UnixStream::connect(&path).await.map_err(|source| ControlError::Connect { path, source })?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    match serde_json::from_slice::<Reply>(&buf)? {
        Reply::Ok(v) => Ok(v),
        Reply::Error(e) => Err(ControlError::Remote(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl Handler for Echo {
        fn handle(&self, req: Request) -> BoxFuture<'_, Result<serde_json::Value, String>> {
            Box::pin(async move {
                match req {
                    Request::KvGet { key, .. } if key == "bad" => Err("no such key".to_string()),
                    other => Ok(serde_json::to_value(other).map_err(|e| e.to_string())?),
                }
            })
        }
    }

    #[tokio::test]
    async fn request_and_reply() {
        let dir = tempfile::tempdir().unwrap();
        let stop = CancellationToken::new();
        let d = dir.path().to_path_buf();
        let s = stop.clone();
        let server = tokio::spawn(async move { serve(&d, Arc::new(Echo), s).await });
        for _ in 0..100 {
            if dir.path().join(SOCKET).exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let v = call(dir.path(), &Request::Status).await.unwrap();
        assert_eq!(v["op"], "status");
        let e = call(dir.path(), &Request::KvGet { key: "bad".into(), linearizable: false }).await.unwrap_err();
        assert_eq!(e.to_string(), "no such key");
        // A session answers several requests on one connection, in order.
        let mut conn = UnixStream::connect(dir.path().join(SOCKET)).await.unwrap();
        conn.write_all(b"{\"op\":\"session\"}\n{\"op\":\"status\"}\n{\"op\":\"token\"}\n").await.unwrap();
        let mut lines = BufReader::new(&mut conn).lines();
        assert_eq!(lines.next_line().await.unwrap().unwrap(), r#"{"ok":null}"#);
        assert!(lines.next_line().await.unwrap().unwrap().contains(r#""op":"status""#));
        assert!(lines.next_line().await.unwrap().unwrap().contains(r#""op":"token""#));
        drop(lines);
        conn.shutdown().await.unwrap();
        // Without a session the daemon closes after one answer, as old clients expect.
        let mut one = UnixStream::connect(dir.path().join(SOCKET)).await.unwrap();
        one.write_all(b"{\"op\":\"status\"}\n{\"op\":\"status\"}\n").await.unwrap();
        let mut all = String::new();
        one.read_to_string(&mut all).await.unwrap();
        assert_eq!(all.lines().count(), 1, "{all}");
        stop.cancel();
        server.await.unwrap().unwrap();
        assert!(matches!(call(dir.path(), &Request::Status).await, Err(ControlError::Connect { .. })));
    }
}
