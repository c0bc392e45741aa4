//! The server on a loopback port, asked as a pod's resolver would ask it.
use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::records::tests::seeded;
use super::Dns;

/// The search list of a pod in `default`, with ndots:5.
const SEARCH: [&str; 3] = ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"];

async fn ask(server: SocketAddr, name: &str, t: RecordType) -> Message {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut q = Message::query();
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    sock.send_to(&q.to_vec().unwrap(), server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf)).await.unwrap().unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.id, q.metadata.id);
    m
}

/// What a stub resolver does with a short name: the search list first (fewer than 5 dots),
/// then the name as given; the first answer that is not NXDOMAIN wins.
async fn resolve(server: SocketAddr, name: &str, t: RecordType) -> Message {
    let mut tries: Vec<String> = SEARCH.iter().map(|s| format!("{name}.{s}.")).collect();
    tries.push(format!("{name}."));
    for n in tries {
        let m = ask(server, &n, t).await;
        if m.metadata.response_code != ResponseCode::NXDomain {
            return m;
        }
    }
    panic!("{name} did not resolve");
}

async fn start() -> (SocketAddr, CancellationToken) {
    let objects = seeded().await;
    let shutdown = CancellationToken::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    // An upstream nobody answers on: forwarding fails fast and visibly.
    let dns = Dns::new(objects, vec![addr], vec!["127.0.0.1:9".parse().unwrap()]);
    tokio::spawn(dns.run(shutdown.clone()));
    // Listening once a TCP connection is accepted.
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return (addr, shutdown);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("dns server did not start on {addr}");
}

fn addresses(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn pods_resolve_services_by_short_and_full_names() {
    let (server, shutdown) = start().await;
    for name in ["svc-node", "svc-node.default", "svc-node.default.svc.cluster.local"] {
        let m = resolve(server, name, RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert_eq!(addresses(&m), vec!["10.43.0.20".to_string()], "{name}");
    }
    shutdown.cancel();
}

#[tokio::test]
async fn external_name_answers_with_its_cname() {
    let (server, shutdown) = start().await;
    let m = resolve(server, "external-service", RecordType::A).await;
    let cname = m.answers.iter().find_map(|r| match &r.data {
        RData::CNAME(c) => Some(c.0.to_ascii()),
        _ => None,
    });
    assert_eq!(cname.as_deref(), Some("google.com."));
    shutdown.cancel();
}

#[tokio::test]
async fn unknown_cluster_names_are_nxdomain_over_udp_and_tcp() {
    let (server, shutdown) = start().await;
    let m = ask(server, "nope.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server).await.unwrap();
    let mut q = Message::query();
    q.add_query(Query::query(Name::from_ascii("svc-node.default.svc.cluster.local.").unwrap(), RecordType::A));
    let bytes = q.to_vec().unwrap();
    s.write_u16(bytes.len() as u16).await.unwrap();
    s.write_all(&bytes).await.unwrap();
    let len = s.read_u16().await.unwrap();
    let mut buf = vec![0u8; len as usize];
    s.read_exact(&mut buf).await.unwrap();
    let m = Message::from_vec(&buf).unwrap();
    assert_eq!(addresses(&m), vec!["10.43.0.20".to_string()]);
    shutdown.cancel();
}

#[tokio::test]
async fn names_outside_the_cluster_fail_without_an_upstream() {
    let (server, shutdown) = start().await;
    let m = ask(server, "example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    shutdown.cancel();
}

#[test]
fn dns_service_ip_is_sent_to_the_node_server() {
    let rules = super::dnat_rules("10.43.0.10".parse().unwrap(), "10.42.1.1:53".parse().unwrap());
    assert_eq!(
        rules,
        vec![
            "ip daddr 10.43.0.10 udp dport 53 dnat ip to 10.42.1.1:53".to_string(),
            "ip daddr 10.43.0.10 tcp dport 53 dnat ip to 10.42.1.1:53".to_string(),
        ]
    );
}
