//! Wire format of the peer transport.
//!
//! Every message is one frame: a 4-byte big-endian length, then that many bytes. A request
//! frame on a fresh bidirectional stream is `kind (u8) | service length (u16 BE) | service |
//! body`. The answer is one frame `status (u8) | payload`; for a raw stream the answer carries
//! no payload and the stream then belongs to the service.

use std::net::SocketAddr;

use quinn::{RecvStream, SendStream};

use crate::error::{Error, Result};

pub(crate) const KIND_RPC: u8 = 0;
pub(crate) const KIND_STREAM: u8 = 1;

pub(crate) const STATUS_OK: u8 = 0;
pub(crate) const STATUS_HANDLER_ERROR: u8 = 1;
pub(crate) const STATUS_UNKNOWN_SERVICE: u8 = 2;
pub(crate) const STATUS_TOO_LARGE: u8 = 3;
pub(crate) const STATUS_SHUTTING_DOWN: u8 = 4;
pub(crate) const STATUS_MALFORMED: u8 = 5;

/// Bytes a request adds around its body: kind, service length and the service name.
pub(crate) fn request_overhead(service: &str) -> usize {
    1 + 2 + service.len()
}

pub(crate) async fn write_frame(send: &mut SendStream, addr: SocketAddr, parts: &[&[u8]]) -> Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(len).map_err(|_| Error::FrameTooLarge { len: len as u64, max: u64::from(u32::MAX) })?;
    send.write_all(&len.to_be_bytes()).await.map_err(|source| Error::WriteFrame { addr, source })?;
    for part in parts {
        send.write_all(part).await.map_err(|source| Error::WriteFrame { addr, source })?;
    }
    Ok(())
}

/// Reads one frame, refusing (before allocating) one longer than `max`.
pub(crate) async fn read_frame(recv: &mut RecvStream, addr: SocketAddr, max: usize) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.map_err(|source| Error::ReadFrame { addr, source })?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(Error::FrameTooLarge { len: len as u64, max: max as u64 });
    }
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf).await.map_err(|source| Error::ReadFrame { addr, source })?;
    Ok(buf)
}

pub(crate) struct Request {
    pub kind: u8,
    pub service: String,
    pub body: Vec<u8>,
}

pub(crate) fn encode_request_head(kind: u8, service: &str) -> Result<Vec<u8>> {
    let len = u16::try_from(service.len())
        .map_err(|_| Error::FrameTooLarge { len: service.len() as u64, max: u64::from(u16::MAX) })?;
    let mut head = Vec::with_capacity(request_overhead(service));
    head.push(kind);
    head.extend_from_slice(&len.to_be_bytes());
    head.extend_from_slice(service.as_bytes());
    Ok(head)
}

pub(crate) fn decode_request(addr: SocketAddr, mut frame: Vec<u8>) -> Result<Request> {
    if frame.len() < 3 {
        return Err(Error::MalformedFrame { addr, reason: "request shorter than its header" });
    }
    let kind = frame[0];
    let service_len = u16::from_be_bytes([frame[1], frame[2]]) as usize;
    if frame.len() < 3 + service_len {
        return Err(Error::MalformedFrame { addr, reason: "service name runs past the frame" });
    }
    let service = std::str::from_utf8(&frame[3..3 + service_len])
        .map_err(|_| Error::MalformedFrame { addr, reason: "service name is not utf-8" })?
        .to_string();
    let body = frame.split_off(3 + service_len);
    Ok(Request { kind, service, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[test]
    fn request_round_trip() {
        let mut frame = encode_request_head(KIND_RPC, "raft.vote").unwrap();
        frame.extend_from_slice(b"hello");
        let req = decode_request(addr(), frame).unwrap();
        assert_eq!(req.kind, KIND_RPC);
        assert_eq!(req.service, "raft.vote");
        assert_eq!(req.body, b"hello");
    }

    #[test]
    fn truncated_requests_are_errors() {
        for frame in [vec![], vec![0], vec![0, 0, 9, b'a'], vec![0, 0, 2, 0xff, 0xfe]] {
            assert!(decode_request(addr(), frame).is_err());
        }
    }
}
