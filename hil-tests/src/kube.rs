//! A small blocking Kubernetes API client for benchmarks and acceptance tests: HTTP/1.1 over
//! rustls with the kubeconfig's client certificate, JSON bodies, streaming watches.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// What a kubeconfig gives: where the API is and who we are.
#[derive(Clone)]
pub struct KubeConfig {
    pub server: String,
    tls: Arc<rustls::ClientConfig>,
}

fn field(text: &str, name: &str) -> Option<String> {
    text.lines().map(str::trim).find_map(|l| {
        l.strip_prefix(name).and_then(|r| r.strip_prefix(':')).map(|v| v.trim().trim_matches('"').to_string())
    })
}

impl KubeConfig {
    /// Reads the first cluster and user of a kubeconfig file (inline `*-data` fields).
    pub fn load(path: &std::path::Path) -> anyhow::Result<KubeConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("read kubeconfig {}", path.display()))?;
        let b64 = |name: &str| -> anyhow::Result<Vec<u8>> {
            let v = field(&text, name).ok_or_else(|| anyhow!("kubeconfig has no {name}"))?;
            base64::engine::general_purpose::STANDARD.decode(v).with_context(|| format!("kubeconfig {name}"))
        };
        let server = field(&text, "server").ok_or_else(|| anyhow!("kubeconfig has no server"))?;
        let ca = b64("certificate-authority-data")?;
        let cert = b64("client-certificate-data")?;
        let key = b64("client-key-data")?;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut &ca[..]) {
            roots.add(c.context("kubeconfig CA")?).context("kubeconfig CA")?;
        }
        let chain: Vec<CertificateDer<'static>> =
            rustls_pemfile::certs(&mut &cert[..]).collect::<Result<_, _>>().context("client certificate")?;
        let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key[..])
            .context("client key")?
            .ok_or_else(|| anyhow!("no client key"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("tls versions")?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .context("client certificate")?;
        Ok(KubeConfig { server, tls: Arc::new(tls) })
    }

    /// The same identity against another server (`https://10.77.0.3:6443`).
    pub fn with_server(&self, server: &str) -> KubeConfig {
        KubeConfig { server: server.to_string(), tls: self.tls.clone() }
    }

    /// Opens one keep-alive connection.
    pub fn connect(&self) -> anyhow::Result<Client> {
        let hostport = self.server.trim_start_matches("https://").trim_end_matches('/').to_string();
        let host = match hostport.rsplit_once(':') {
            Some((h, _)) => h.trim_matches(['[', ']']).to_string(),
            None => hostport.clone(),
        };
        let addr = hostport
            .to_socket_addrs()
            .with_context(|| format!("resolve {hostport}"))?
            .next()
            .ok_or_else(|| anyhow!("no address for {hostport}"))?;
        let tcp =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).with_context(|| format!("connect {hostport}"))?;
        tcp.set_nodelay(true).ok();
        tcp.set_read_timeout(Some(Duration::from_secs(60))).ok();
        let name = ServerName::try_from(host.clone()).map_err(|e| anyhow!("server name {host}: {e}"))?;
        let conn = rustls::ClientConnection::new(self.tls.clone(), name).context("tls")?;
        Ok(Client { io: BufReader::new(rustls::StreamOwned::new(conn, tcp)), host: hostport })
    }
}

/// A raw HTTP/1.1 connection (TLS, or plain TCP for etcd's gateway).
pub struct Http<S: Read + Write> {
    io: BufReader<S>,
    host: String,
}

pub type Client = Http<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

impl Http<TcpStream> {
    pub fn plain(hostport: &str) -> anyhow::Result<Http<TcpStream>> {
        let tcp = TcpStream::connect(hostport).with_context(|| format!("connect {hostport}"))?;
        tcp.set_nodelay(true).ok();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).ok();
        Ok(Http { io: BufReader::new(tcp), host: hostport.to_string() })
    }
}

/// An HTTP answer.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("response body is not JSON")
    }
    pub fn ok(self) -> anyhow::Result<Response> {
        if (200..300).contains(&self.status) {
            Ok(self)
        } else {
            bail!("HTTP {}: {}", self.status, String::from_utf8_lossy(&self.body))
        }
    }
}

impl<S: Read + Write> Http<S> {
    fn send(&mut self, method: &str, path: &str, content_type: &str, body: &[u8]) -> anyhow::Result<()> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nUser-Agent: shoal-hil\r\n\r\n",
            self.host,
            body.len()
        );
        let w = self.io.get_mut();
        w.write_all(head.as_bytes()).context("send request")?;
        w.write_all(body).context("send body")?;
        w.flush().context("send")?;
        Ok(())
    }

    /// Reads a status line and headers; returns (status, content-length, chunked).
    fn head(&mut self) -> anyhow::Result<(u16, Option<usize>, bool)> {
        let mut line = String::new();
        if self.io.read_line(&mut line).context("read status")? == 0 {
            bail!("connection closed");
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad status line {line:?}"))?;
        let (mut len, mut chunked) = (None, false);
        loop {
            line.clear();
            self.io.read_line(&mut line).context("read header")?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    len = v.parse().ok();
                } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                }
            }
        }
        Ok((status, len, chunked))
    }

    fn chunk(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        let mut line = String::new();
        if self.io.read_line(&mut line).context("read chunk size")? == 0 {
            return Ok(None);
        }
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16).context("chunk size")?;
        let mut buf = vec![0u8; size + 2];
        self.io.read_exact(&mut buf).context("read chunk")?;
        buf.truncate(size);
        Ok(if size == 0 { None } else { Some(buf) })
    }

    pub fn request(&mut self, method: &str, path: &str, content_type: &str, body: &[u8]) -> anyhow::Result<Response> {
        self.send(method, path, content_type, body)?;
        let (status, len, chunked) = self.head()?;
        let mut body = Vec::new();
        if chunked {
            while let Some(c) = self.chunk()? {
                body.extend_from_slice(&c);
            }
        } else if let Some(n) = len {
            body.resize(n, 0);
            self.io.read_exact(&mut body).context("read body")?;
        } else {
            self.io.read_to_end(&mut body).context("read body")?;
        }
        Ok(Response { status, body })
    }

    pub fn get(&mut self, path: &str) -> anyhow::Result<Response> {
        self.request("GET", path, "application/json", &[])
    }
    pub fn post(&mut self, path: &str, body: &serde_json::Value) -> anyhow::Result<Response> {
        self.request("POST", path, "application/json", &serde_json::to_vec(body)?)
    }
    pub fn put(&mut self, path: &str, body: &serde_json::Value) -> anyhow::Result<Response> {
        self.request("PUT", path, "application/json", &serde_json::to_vec(body)?)
    }
    pub fn merge_patch(&mut self, path: &str, body: &serde_json::Value) -> anyhow::Result<Response> {
        self.request("PATCH", path, "application/merge-patch+json", &serde_json::to_vec(body)?)
    }
    pub fn delete(&mut self, path: &str) -> anyhow::Result<Response> {
        self.request("DELETE", path, "application/json", &[])
    }

    /// Starts a watch (`path` with `watch=true`); the connection then yields events.
    pub fn watch(mut self, path: &str) -> anyhow::Result<Watch<S>> {
        self.send("GET", path, "application/json", &[])?;
        let (status, _, chunked) = self.head()?;
        if status != 200 {
            bail!("watch {path}: HTTP {status}");
        }
        Ok(Watch { http: self, buf: Vec::new(), chunked })
    }
}

/// A running watch: one JSON event per line.
pub struct Watch<S: Read + Write> {
    http: Http<S>,
    buf: Vec<u8>,
    chunked: bool,
}

impl<S: Read + Write> Watch<S> {
    /// The next event (`{"type":..,"object":..}`), or None when the server ended the watch.
    pub fn next_event(&mut self) -> anyhow::Result<Option<serde_json::Value>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                if line.iter().all(|b| b.is_ascii_whitespace()) {
                    continue;
                }
                return Ok(Some(serde_json::from_slice(&line).context("watch event")?));
            }
            if self.chunked {
                match self.http.chunk()? {
                    Some(c) => self.buf.extend_from_slice(&c),
                    None => return Ok(None),
                }
            } else {
                let mut tmp = [0u8; 16384];
                let n = self.http.io.read(&mut tmp).context("read watch")?;
                if n == 0 {
                    return Ok(None);
                }
                self.buf.extend_from_slice(&tmp[..n]);
            }
        }
    }
}
