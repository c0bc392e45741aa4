//! Cluster DNS, served by every node for its pods: Service and pod names of `cluster.local`
//! answered from the local replica (so it keeps answering while the node is cut off from the
//! leader), everything else forwarded to the node's resolvers with a small cache.
//!
//! Each node listens on its pod-bridge gateway (`10.42.N.1:53`, UDP and TCP); the Service
//! data plane sends the DNS Service IP (`10.43.0.10:53`) there.
mod forward;
mod records;

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use shoal_kube::Objects;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

pub use forward::{parse_resolv_conf, system_upstreams};
use records::{Answer, Qtype, Rec, Zone, TTL};

/// Errors of the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("bind dns socket {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("read the local replica")]
    ReadReplica(#[source] shoal_kube::Error),
}

/// The cluster DNS server of one node.
pub struct Dns {
    objects: Objects,
    listen: Vec<SocketAddr>,
    upstreams: Vec<SocketAddr>,
}

struct Server {
    zone: Zone,
    forwarder: forward::Forwarder,
}

impl Dns {
    /// A server answering on every address of `listen` (UDP and TCP), forwarding names
    /// outside the cluster to `upstreams` (see [`system_upstreams`]).
    pub fn new(objects: Objects, listen: Vec<SocketAddr>, upstreams: Vec<SocketAddr>) -> Self {
        Dns { objects, listen, upstreams }
    }

    /// Serves until `shutdown`. An address that cannot be bound yet (the pod bridge's gateway
    /// before the node agent has created it) is retried every second.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), DnsError> {
        let server =
            Arc::new(Server { zone: Zone::new(self.objects), forwarder: forward::Forwarder::new(self.upstreams) });
        let mut tasks = tokio::task::JoinSet::new();
        for addr in self.listen {
            tasks.spawn(listen(Arc::clone(&server), addr, shutdown.clone()));
        }
        shutdown.cancelled().await;
        tasks.shutdown().await;
        Ok(())
    }
}

async fn bind(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let udp = UdpSocket::bind(addr).await.map_err(|source| DnsError::Bind { addr, source })?;
    let tcp = TcpListener::bind(addr).await.map_err(|source| DnsError::Bind { addr, source })?;
    Ok((udp, tcp))
}

async fn listen(server: Arc<Server>, addr: SocketAddr, shutdown: CancellationToken) {
    let mut warned = false;
    let (udp, tcp) = loop {
        match bind(addr).await {
            Ok(s) => break s,
            Err(error) => {
                if !warned {
                    tracing::warn!(%error, "dns address not bindable yet; retrying");
                    warned = true;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
        }
    };
    tracing::info!(%addr, "dns listening");
    tokio::join!(serve_udp(Arc::clone(&server), Arc::new(udp), shutdown.clone()), serve_tcp(server, tcp, shutdown));
}

impl Dns {
    /// The addresses this server answers on.
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen
    }
}

async fn serve_udp(server: Arc<Server>, sock: Arc<UdpSocket>, shutdown: CancellationToken) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(error) => {
                    tracing::debug!(%error, "dns udp receive failed");
                    continue;
                }
            },
        };
        let raw = buf[..n].to_vec();
        let (server, sock) = (Arc::clone(&server), Arc::clone(&sock));
        tokio::spawn(async move {
            if let Some(reply) = server.handle(&raw, true).await {
                if let Err(error) = sock.send_to(&reply, peer).await {
                    tracing::debug!(%error, %peer, "dns udp reply failed");
                }
            }
        });
    }
}

async fn serve_tcp(server: Arc<Server>, listener: TcpListener, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(error) => {
                    tracing::debug!(%error, "dns tcp accept failed");
                    continue;
                }
            },
        };
        let server = Arc::clone(&server);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::timeout(std::time::Duration::from_secs(30), serve_tcp_conn(server, stream)) => {}
            }
        });
    }
}

async fn serve_tcp_conn(server: Arc<Server>, mut stream: TcpStream) {
    loop {
        let Ok(len) = stream.read_u16().await else { return };
        let mut raw = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut raw).await.is_err() {
            return;
        }
        let Some(reply) = server.handle(&raw, false).await else { return };
        let Ok(len) = u16::try_from(reply.len()) else { return };
        if stream.write_u16(len).await.is_err() || stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// nftables `nat` rules (for a prerouting and an output chain) that send the DNS Service IP's
/// port 53 to where this node's server listens, e.g. `10.43.0.10` to `10.42.N.1:53`.
pub fn dnat_rules(service_ip: std::net::IpAddr, listen: SocketAddr) -> Vec<String> {
    let (fam, to) = match listen {
        SocketAddr::V4(a) => ("ip", a.to_string()),
        SocketAddr::V6(a) => ("ip6", format!("[{}]:{}", a.ip(), a.port())),
    };
    ["udp", "tcp"].iter().map(|proto| format!("{fam} daddr {service_ip} {proto} dport 53 dnat {fam} to {to}")).collect()
}

fn qtype(t: RecordType) -> Qtype {
    match t {
        RecordType::A => Qtype::A,
        RecordType::AAAA => Qtype::Aaaa,
        RecordType::SRV => Qtype::Srv,
        RecordType::PTR => Qtype::Ptr,
        RecordType::CNAME => Qtype::Cname,
        RecordType::ANY => Qtype::Any,
        _ => Qtype::Other,
    }
}

fn fqdn(s: &str) -> Option<Name> {
    Name::from_ascii(format!("{s}.")).ok()
}

fn to_record(r: &Rec) -> Option<Record> {
    let (name, data) = match r {
        Rec::A(n, ip) => (n, RData::A(A(*ip))),
        Rec::Aaaa(n, ip) => (n, RData::AAAA(AAAA(*ip))),
        Rec::Cname(n, t) => (n, RData::CNAME(CNAME(fqdn(t)?))),
        Rec::Ptr(n, t) => (n, RData::PTR(PTR(fqdn(t)?))),
        Rec::Srv { name, port, target } => (name, RData::SRV(SRV::new(0, 100, *port, fqdn(target)?))),
    };
    Some(Record::from_rdata(fqdn(name)?, TTL, data))
}

impl Server {
    /// The reply to one raw query; None when it cannot be parsed enough to answer.
    async fn handle(&self, raw: &[u8], udp: bool) -> Option<Vec<u8>> {
        let query = match Message::from_vec(raw) {
            Ok(m) => m,
            Err(_) if raw.len() >= 12 => {
                let id = u16::from_be_bytes([raw[0], raw[1]]);
                return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr).to_vec().ok();
            }
            Err(_) => return None,
        };
        if query.metadata.message_type != MessageType::Query {
            return None;
        }
        let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
        reply.metadata.recursion_desired = query.metadata.recursion_desired;
        reply.metadata.recursion_available = true;
        let Some(q) = query.queries.first().cloned().filter(|_| query.metadata.op_code == OpCode::Query) else {
            reply.metadata.response_code = ResponseCode::NotImp;
            return reply.to_vec().ok();
        };
        reply.add_query(q.clone());
        let name = q.name().to_ascii().trim_end_matches('.').to_lowercase();
        let answer = match self.zone.answer(&name, qtype(q.query_type())).await {
            Ok(a) => a,
            Err(error) => {
                tracing::warn!(%error, name, "dns lookup failed");
                reply.metadata.response_code = ResponseCode::ServFail;
                return reply.to_vec().ok();
            }
        };
        match answer {
            Answer::NotOurs => {
                if let Some(bytes) = self.forwarder.forward(&query, raw).await {
                    return Some(bytes);
                }
                reply.metadata.response_code = ResponseCode::ServFail;
            }
            Answer::NoSuchName => {
                reply.metadata.authoritative = true;
                reply.metadata.response_code = ResponseCode::NXDomain;
            }
            Answer::Records(recs) => {
                reply.metadata.authoritative = true;
                let srv = q.query_type() == RecordType::SRV;
                for r in &recs {
                    let Some(rec) = to_record(r) else { continue };
                    let is_extra = srv && !matches!(r, Rec::Srv { .. });
                    if is_extra {
                        reply.add_additional(rec);
                    } else {
                        reply.add_answer(rec);
                    }
                }
                if let [Rec::Cname(_, target)] = recs.as_slice() {
                    if matches!(q.query_type(), RecordType::A | RecordType::AAAA) {
                        self.chase(target, q.query_type(), &mut reply).await;
                    }
                }
            }
        }
        let mut bytes = reply.to_vec().ok()?;
        let limit = query.edns.as_ref().map(|e| usize::from(e.max_payload()).max(512)).unwrap_or(512);
        if udp && bytes.len() > limit {
            let mut t = reply.truncate();
            t.metadata.truncation = true;
            bytes = t.to_vec().ok()?;
        }
        Some(bytes)
    }

    /// Follows an ExternalName's CNAME upstream, adding the target's addresses when found.
    async fn chase(&self, target: &str, t: RecordType, reply: &mut Message) {
        let Some(name) = fqdn(target) else { return };
        let mut q = Message::query();
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(name, t));
        let Ok(raw) = q.to_vec() else { return };
        let Some(bytes) = self.forwarder.forward(&q, &raw).await else { return };
        if let Ok(m) = Message::from_vec(&bytes) {
            for r in m.answers {
                reply.add_answer(r);
            }
        }
    }
}

#[cfg(test)]
mod tests;
