use std::net::SocketAddr;
use std::time::Duration;

/// Everything that can fail in shoal-gossip.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("generate key pair")]
    GenerateKey(#[source] rcgen::Error),
    #[error("sign certificate for {subject}")]
    SignCertificate {
        subject: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("invalid certificate field {field}: {value:?}")]
    InvalidCertificateField {
        field: &'static str,
        value: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("certificate request: {reason}")]
    CertificateRequest { reason: String },
    #[error("this node does not hold the cluster CA key (only voters do)")]
    NoCaKey,
    #[error("load CA certificate")]
    LoadCa(#[source] rcgen::Error),
    #[error("load private key")]
    LoadKey(#[source] rcgen::Error),
    #[error("parse PEM of {what}")]
    ParsePem {
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("no {what} found in PEM")]
    EmptyPem { what: &'static str },
    #[error("trust CA certificate")]
    TrustCa(#[source] rustls::Error),
    #[error("build certificate verifier")]
    BuildVerifier(#[source] rustls::server::VerifierBuilderError),
    #[error("build TLS config")]
    BuildTls(#[source] rustls::Error),
    #[error("build QUIC crypto config")]
    BuildQuic(#[source] quinn::crypto::rustls::NoInitialCipherSuite),
    #[error("invalid QUIC idle timeout")]
    IdleTimeout(#[source] quinn::VarIntBoundsExceeded),
    #[error("bind QUIC endpoint on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("read local address")]
    LocalAddr(#[source] std::io::Error),
    #[error("connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectError,
    },
    #[error("handshake with {addr}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectionError,
    },
    #[error("{addr} presented a refused certificate: {reason}")]
    PeerCertificateRefused { addr: SocketAddr, reason: crate::transport::AfterHandshake },
    #[error("timed out connecting to {addr} after {after:?}")]
    ConnectTimeout { addr: SocketAddr, after: Duration },
    #[error("open stream to {addr}")]
    OpenStream {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectionError,
    },
    #[error("write frame to {addr}")]
    WriteFrame {
        addr: SocketAddr,
        #[source]
        source: quinn::WriteError,
    },
    #[error("read frame from {addr}")]
    ReadFrame {
        addr: SocketAddr,
        #[source]
        source: quinn::ReadExactError,
    },
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: u64, max: u64 },
    #[error("malformed frame from {addr}: {reason}")]
    MalformedFrame { addr: SocketAddr, reason: &'static str },
    #[error("call {service} on {addr} timed out after {after:?}")]
    Timeout { addr: SocketAddr, service: String, after: Duration },
    #[error("{service} on {addr} failed: {message}")]
    Remote { addr: SocketAddr, service: String, message: String },
    #[error("{addr} serves no {service}")]
    UnknownService { addr: SocketAddr, service: String },
    #[error("{addr} is shutting down")]
    PeerShuttingDown { addr: SocketAddr },
    #[error("transport is shut down")]
    Closed,
    #[error("invalid join token: {reason}")]
    InvalidToken { reason: &'static str },
    #[error("join refused: {message}")]
    JoinRefused { message: String },
    #[error("encode join message")]
    EncodeJoin(#[source] serde_json::Error),
    #[error("decode join message from {addr}")]
    DecodeJoin {
        addr: SocketAddr,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid membership config: {reason}")]
    InvalidMembershipConfig { reason: &'static str },
    #[error("invalid transport config: {reason}")]
    InvalidTransportConfig { reason: &'static str },
    #[error("bind gossip socket on {addr}")]
    BindGossip {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("start gossip")]
    StartGossip(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("invalid gossip keyring: {reason}")]
    InvalidGossipKeyring { reason: String },
    #[error("resolve seed {seed}")]
    ResolveSeed {
        seed: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
