//! Names outside the cluster: forwarded to the node's resolvers, answers kept for their TTL
//! (at most [`MAX_TTL`]).
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use tokio::net::UdpSocket;

/// The longest a forwarded answer is kept.
pub(crate) const MAX_TTL: u32 = 30;
/// How long a negative answer is kept.
const NEGATIVE_TTL: u32 = 5;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
const CACHE_ENTRIES: usize = 4096;

/// The nameservers of a resolv.conf text, port 53.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        .filter_map(|ip| ip.split('%').next().and_then(|ip| ip.parse::<IpAddr>().ok()))
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The node's upstream resolvers: /etc/resolv.conf, with loopback stub resolvers (as
/// systemd-resolved's 127.0.0.53) kept only when they answer; when none is left, the stub's
/// own upstreams from /run/systemd/resolve/resolv.conf.
pub async fn system_upstreams() -> Vec<SocketAddr> {
    let etc = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut out = Vec::new();
    for s in parse_resolv_conf(&etc) {
        if !s.ip().is_loopback() || probe(s).await {
            out.push(s);
        }
    }
    if out.is_empty() {
        let run = std::fs::read_to_string("/run/systemd/resolve/resolv.conf").unwrap_or_default();
        out = parse_resolv_conf(&run).into_iter().filter(|s| !s.ip().is_loopback()).collect();
    }
    out
}

/// Whether a resolver answers a query for the root's NS within half a second.
async fn probe(server: SocketAddr) -> bool {
    let mut q = Message::query();
    q.metadata.recursion_desired = true;
    q.add_query(hickory_proto::op::Query::query(hickory_proto::rr::Name::root(), hickory_proto::rr::RecordType::NS));
    let Ok(bytes) = q.to_vec() else { return false };
    let bind: SocketAddr = if server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let Ok(sock) = UdpSocket::bind(bind).await else { return false };
    if sock.send_to(&bytes, server).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 4096];
    matches!(tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)).await, Ok(Ok(_)))
}

struct Entry {
    /// The answer with its id zeroed.
    bytes: Vec<u8>,
    until: Instant,
}

/// Forwards queries over UDP (TCP on truncation is left to the client) and caches the answers.
pub(crate) struct Forwarder {
    upstreams: Vec<SocketAddr>,
    cache: Mutex<HashMap<(String, u16, u16), Entry>>,
}

fn cache_key(m: &Message) -> Option<(String, u16, u16)> {
    let q = m.queries.first()?;
    Some((q.name().to_ascii().to_lowercase(), u16::from(q.query_type()), u16::from(q.query_class())))
}

impl Forwarder {
    pub(crate) fn new(upstreams: Vec<SocketAddr>) -> Self {
        Forwarder { upstreams, cache: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u16, u16), Entry>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The upstream answer to `query` (raw bytes as the client sent them), or None when no
    /// upstream answered.
    pub(crate) async fn forward(&self, query: &Message, raw: &[u8]) -> Option<Vec<u8>> {
        let key = cache_key(query);
        let id = query.metadata.id.to_be_bytes();
        if let Some(k) = &key {
            if let Some(e) = self.lock().get(k).filter(|e| e.until > Instant::now()) {
                let mut b = e.bytes.clone();
                b[..2].copy_from_slice(&id);
                return Some(b);
            }
        }
        for up in &self.upstreams {
            let Some(answer) = exchange(*up, raw).await else { continue };
            if answer.len() < 12 || answer[..2] != id {
                continue;
            }
            if let (Some(k), Ok(m)) = (key, Message::from_vec(&answer)) {
                let ttl = match m.metadata.response_code {
                    ResponseCode::NoError if !m.answers.is_empty() => {
                        m.answers.iter().map(|r| r.ttl).min().unwrap_or(0).min(MAX_TTL)
                    }
                    ResponseCode::NoError | ResponseCode::NXDomain => NEGATIVE_TTL,
                    _ => 0,
                };
                if ttl > 0 && !m.metadata.truncation {
                    let mut bytes = answer.clone();
                    bytes[..2].copy_from_slice(&[0, 0]);
                    let mut cache = self.lock();
                    if cache.len() >= CACHE_ENTRIES {
                        let now = Instant::now();
                        cache.retain(|_, e| e.until > now);
                        if cache.len() >= CACHE_ENTRIES {
                            cache.clear();
                        }
                    }
                    cache.insert(k, Entry { bytes, until: Instant::now() + Duration::from_secs(u64::from(ttl)) });
                }
            }
            return Some(answer);
        }
        None
    }
}

async fn exchange(server: SocketAddr, raw: &[u8]) -> Option<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let sock = UdpSocket::bind(bind).await.ok()?;
    sock.connect(server).await.ok()?;
    sock.send(raw).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(UPSTREAM_TIMEOUT, sock.recv(&mut buf)).await.ok()?.ok()?;
    buf.truncate(n);
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# generated\nsearch lan\nnameserver 192.168.1.1\nnameserver fe80::1%eth0\noptions ndots:1\nnameserver bogus\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec!["192.168.1.1:53".parse().unwrap(), SocketAddr::new("fe80::1".parse().unwrap(), 53)]
        );
    }
}
