//! SPDY/3.1 framing, as far as `pods/portforward` needs it: frames read from and written to a
//! byte stream, and the zlib-compressed header blocks (one compression context per direction,
//! primed with the SPDY/3 dictionary as the protocol requires).
//!
//! The client's header blocks reference the dictionary, so the inflater is primed with it: a
//! stored deflate block holding the dictionary is fed (and its output dropped) before the
//! client's deflate data, which puts the dictionary in the inflater's history window. The
//! blocks this side sends are compressed without the dictionary, which any zlib reader accepts.
use std::io;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt};

pub(crate) const SYN_STREAM: u16 = 1;
pub(crate) const SYN_REPLY: u16 = 2;
pub(crate) const RST_STREAM: u16 = 3;
pub(crate) const PING: u16 = 6;
pub(crate) const GOAWAY: u16 = 7;
pub(crate) const FLAG_FIN: u8 = 0x01;
/// RST_STREAM status: the stream was refused (an unknown stream type).
pub(crate) const STATUS_REFUSED: u32 = 3;
const VERSION: u16 = 3;
/// A decompressed header block above this is refused (real ones are a few hundred bytes).
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// A control frame longer than this is refused before it is read (it carries at most a
/// compressed header block).
const MAX_CONTROL_FRAME: usize = MAX_HEADER_BLOCK;
/// A DATA frame longer than this is refused before it is read: kubectl sends at most 32 KiB,
/// while the format allows 16 MiB, which a client could make every stream buffer.
pub(crate) const MAX_DATA_FRAME: usize = 1024 * 1024;

/// One frame as read from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    Control { kind: u16, flags: u8, data: Vec<u8> },
    Data { stream: u32, flags: u8, data: Vec<u8> },
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads one frame; `None` at a clean end of the stream.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Frame>> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let flags = head[4];
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    let (control, max) = if head[0] & 0x80 != 0 { ("control", MAX_CONTROL_FRAME) } else { ("data", MAX_DATA_FRAME) };
    if len > max {
        return Err(invalid(format!("SPDY {control} frame of {len} bytes is over the limit of {max}")));
    }
    let mut data = vec![0u8; len];
    r.read_exact(&mut data).await?;
    if head[0] & 0x80 != 0 {
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != VERSION {
            return Err(invalid(format!("SPDY version {version} is not supported")));
        }
        Ok(Some(Frame::Control { kind: u16::from_be_bytes([head[2], head[3]]), flags, data }))
    } else {
        let stream = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
        Ok(Some(Frame::Data { stream, flags, data }))
    }
}

fn length_bytes(len: usize) -> [u8; 3] {
    let l = (len.min(0x00ff_ffff) as u32).to_be_bytes();
    [l[1], l[2], l[3]]
}

/// A DATA frame (`data` must stay under 16 MiB; callers send at most 32 KiB).
pub(crate) fn data_frame(stream: u32, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + data.len());
    v.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    v.push(flags);
    v.extend_from_slice(&length_bytes(data.len()));
    v.extend_from_slice(data);
    v
}

/// A control frame of `kind` with its payload.
pub(crate) fn control_frame(kind: u16, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + data.len());
    v.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.push(flags);
    v.extend_from_slice(&length_bytes(data.len()));
    v.extend_from_slice(data);
    v
}

/// A RST_STREAM frame.
pub(crate) fn rst_stream(stream: u32, status: u32) -> Vec<u8> {
    let mut d = Vec::with_capacity(8);
    d.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    d.extend_from_slice(&status.to_be_bytes());
    control_frame(RST_STREAM, 0, &d)
}

/// The stream id at the start of a SYN_STREAM, SYN_REPLY or RST_STREAM payload.
pub(crate) fn stream_id(data: &[u8]) -> Option<u32> {
    let b: [u8; 4] = data.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(b) & 0x7fff_ffff)
}

/// The two header compression contexts of one connection.
pub(crate) struct HeaderCodec {
    inflate: Decompress,
    /// Whether the client's zlib header is still to come (it precedes its first block only).
    zlib_header_pending: bool,
    deflate: Compress,
}

impl HeaderCodec {
    pub(crate) fn new() -> io::Result<HeaderCodec> {
        let mut codec = HeaderCodec {
            inflate: Decompress::new(false),
            zlib_header_pending: true,
            deflate: Compress::new(Compression::default(), true),
        };
        let len = u16::try_from(DICTIONARY.len()).map_err(|_| invalid("dictionary too long"))?;
        let mut primer = vec![0u8];
        primer.extend_from_slice(&len.to_le_bytes());
        primer.extend_from_slice(&(!len).to_le_bytes());
        primer.extend_from_slice(DICTIONARY);
        let mut sink = Vec::with_capacity(DICTIONARY.len() + 64);
        codec.inflate_into(&primer, &mut sink)?;
        if sink != DICTIONARY {
            return Err(invalid("priming the header inflater failed"));
        }
        Ok(codec)
    }

    fn inflate_into(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        loop {
            if out.capacity() - out.len() < 1024 {
                out.reserve(4096);
            }
            let (in_before, out_before) = (self.inflate.total_in(), out.len());
            let status = self
                .inflate
                .decompress_vec(input, out, FlushDecompress::Sync)
                .map_err(|e| invalid(format!("inflate header block: {e}")))?;
            let used = (self.inflate.total_in() - in_before) as usize;
            input = &input[used..];
            if out.len() > MAX_HEADER_BLOCK + DICTIONARY.len() {
                return Err(invalid("header block too large"));
            }
            if status == Status::StreamEnd || (input.is_empty() && out.len() < out.capacity()) {
                return Ok(());
            }
            if used == 0 && out.len() == out_before && out.len() < out.capacity() {
                return Err(invalid("inflate header block: no progress"));
            }
        }
    }

    /// Decodes a header block sent by the client (names are lower case in SPDY/3).
    pub(crate) fn decode(&mut self, block: &[u8]) -> io::Result<Vec<(String, String)>> {
        let mut block = block;
        if self.zlib_header_pending {
            let (cmf, flg) = match block {
                [a, b, ..] => (*a, *b),
                _ => return Err(invalid("header block without a zlib header")),
            };
            if cmf & 0x0f != 8 || (u16::from(cmf) << 8 | u16::from(flg)) % 31 != 0 {
                return Err(invalid("header block with a bad zlib header"));
            }
            let skip = if flg & 0x20 != 0 { 6 } else { 2 };
            block = block.get(skip..).ok_or_else(|| invalid("truncated zlib header"))?;
            self.zlib_header_pending = false;
        }
        let mut raw = Vec::new();
        self.inflate_into(block, &mut raw)?;
        parse_headers(&raw)
    }

    /// Encodes a header block for a frame this side sends.
    pub(crate) fn encode(&mut self, headers: &[(&str, &str)]) -> io::Result<Vec<u8>> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = raw.as_slice();
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| invalid(format!("deflate header block: {e}")))?;
            input = &input[(self.deflate.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

fn parse_headers(raw: &[u8]) -> io::Result<Vec<(String, String)>> {
    let mut at = 0usize;
    let u32_at = |at: &mut usize| -> io::Result<usize> {
        let b: [u8; 4] =
            raw.get(*at..*at + 4).and_then(|s| s.try_into().ok()).ok_or_else(|| invalid("truncated header block"))?;
        *at += 4;
        Ok(u32::from_be_bytes(b) as usize)
    };
    let count = u32_at(&mut at)?;
    let mut out = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let field = |at: &mut usize| -> io::Result<String> {
            let len = u32_at(at)?;
            let s = raw.get(*at..*at + len).ok_or_else(|| invalid("truncated header block"))?;
            *at += len;
            Ok(String::from_utf8_lossy(s).into_owned())
        };
        let name = field(&mut at)?.to_ascii_lowercase();
        let value = field(&mut at)?;
        out.push((name, value));
    }
    Ok(out)
}

/// The SPDY/3 header compression dictionary (1423 bytes, from the protocol specification).
pub(crate) const DICTIONARY: &[u8] = b"\
    \x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\x00\x00\x00\x03put\x00\x00\x00\x06de\
    lete\x00\x00\x00\x05trace\x00\x00\x00\x06accept\x00\x00\x00\x0eaccept-charset\x00\x00\x00\x0faccept-\
    encoding\x00\x00\x00\x0faccept-language\x00\x00\x00\x0daccept-ranges\x00\x00\x00\x03age\x00\x00\x00\
    \x05allow\x00\x00\x00\x0dauthorization\x00\x00\x00\x0dcache-control\x00\x00\x00\x0aconnection\x00\
    \x00\x00\x0ccontent-base\x00\x00\x00\x10content-encoding\x00\x00\x00\x10content-language\x00\x00\x00\
    \x0econtent-length\x00\x00\x00\x10content-location\x00\x00\x00\x0bcontent-md5\x00\x00\x00\x0dcontent\
    -range\x00\x00\x00\x0ccontent-type\x00\x00\x00\x04date\x00\x00\x00\x04etag\x00\x00\x00\x06expect\x00\
    \x00\x00\x07expires\x00\x00\x00\x04from\x00\x00\x00\x04host\x00\x00\x00\x08if-match\x00\x00\x00\x11i\
    f-modified-since\x00\x00\x00\x0dif-none-match\x00\x00\x00\x08if-range\x00\x00\x00\x13if-unmodified-s\
    ince\x00\x00\x00\x0dlast-modified\x00\x00\x00\x08location\x00\x00\x00\x0cmax-forwards\x00\x00\x00\
    \x06pragma\x00\x00\x00\x12proxy-authenticate\x00\x00\x00\x13proxy-authorization\x00\x00\x00\x05range\
    \x00\x00\x00\x07referer\x00\x00\x00\x0bretry-after\x00\x00\x00\x06server\x00\x00\x00\x02te\x00\x00\
    \x00\x07trailer\x00\x00\x00\x11transfer-encoding\x00\x00\x00\x07upgrade\x00\x00\x00\x0auser-agent\
    \x00\x00\x00\x04vary\x00\x00\x00\x03via\x00\x00\x00\x07warning\x00\x00\x00\x10www-authenticate\x00\
    \x00\x00\x06method\x00\x00\x00\x03get\x00\x00\x00\x06status\x00\x00\x00\x06200 OK\x00\x00\x00\x07ver\
    sion\x00\x00\x00\x08HTTP/1.1\x00\x00\x00\x03url\x00\x00\x00\x06public\x00\x00\x00\x0aset-cookie\x00\
    \x00\x00\x0akeep-alive\x00\x00\x00\x06origin10010120120220520630030230330430530630740240540640740840\
    9410411412413414415416417502504505203 Non-Authoritative Information204 No Content301 Moved Permanent\
    ly400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemen\
    ted503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, T\
    hu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xh\
    tml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-88\
    59-1,utf-,*,enq=0.\
";

#[cfg(test)]
mod tests {
    use super::*;

    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &x in data {
            a = (a + u32::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        b << 16 | a
    }

    #[test]
    fn dictionary_is_the_spdy3_one() {
        assert_eq!(DICTIONARY.len(), 1423);
        // The dictionary id a SPDY/3 peer writes in its zlib header.
        assert_eq!(adler32(DICTIONARY), 0xe3c6_a7c2);
    }

    /// A header block compressed with the dictionary, as a Go client sends it, is decoded.
    #[test]
    fn decodes_a_block_compressed_with_the_dictionary() {
        let mut raw = Vec::new();
        let headers = [("streamtype", "data"), ("port", "80"), ("accept-encoding", "gzip,deflate")];
        raw.extend_from_slice(&3u32.to_be_bytes());
        for (k, v) in headers {
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        // A peer whose compressor is primed with the dictionary: compress dictionary + block and
        // keep only the bytes after the dictionary's part, behind a zlib header with FDICT.
        let mut c = Compress::new(Compression::best(), false);
        let mut primed = Vec::with_capacity(8192);
        c.compress_vec(DICTIONARY, &mut primed, FlushCompress::Sync).unwrap();
        let mut body = Vec::with_capacity(8192);
        c.compress_vec(&raw, &mut body, FlushCompress::Sync).unwrap();
        let mut block = vec![0x78, 0xbb];
        block.extend_from_slice(&adler32(DICTIONARY).to_be_bytes());
        block.extend_from_slice(&body);
        // The reference into the dictionary only works when the inflater's history holds it.
        let mut codec = HeaderCodec::new().unwrap();
        let got = codec.decode(&block).unwrap();
        let want: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn encoded_blocks_inflate_as_zlib() {
        let mut codec = HeaderCodec::new().unwrap();
        let a = codec.encode(&[]).unwrap();
        let b = codec.encode(&[("x", "y")]).unwrap();
        let mut d = Decompress::new(true);
        let mut out = Vec::with_capacity(1024);
        d.decompress_vec(&a, &mut out, FlushDecompress::Sync).unwrap();
        assert_eq!(out, [0, 0, 0, 0]);
        out.clear();
        d.decompress_vec(&b, &mut out, FlushDecompress::Sync).unwrap();
        assert_eq!(parse_headers(&out).unwrap(), [("x".to_string(), "y".to_string())]);
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let mut wire = data_frame(3, FLAG_FIN, b"hi");
        wire.extend(control_frame(PING, 0, &7u32.to_be_bytes()));
        let mut r = wire.as_slice();
        assert_eq!(read_frame(&mut r).await.unwrap(), Some(Frame::Data { stream: 3, flags: 1, data: b"hi".to_vec() }));
        assert_eq!(
            read_frame(&mut r).await.unwrap(),
            Some(Frame::Control { kind: PING, flags: 0, data: vec![0, 0, 0, 7] })
        );
        assert_eq!(read_frame(&mut r).await.unwrap(), None);
        let bad = [0x80u8, 2, 0, 1, 0, 0, 0, 0];
        assert!(read_frame(&mut bad.as_slice()).await.is_err());
    }

    /// A frame header announcing more than the caps is refused before anything is allocated
    /// or read, whatever follows.
    #[tokio::test]
    async fn oversized_frames_are_refused_from_their_header() {
        let mut data = vec![0, 0, 0, 1, 0];
        data.extend_from_slice(&length_bytes(MAX_DATA_FRAME + 1));
        let e = read_frame(&mut data.as_slice()).await.unwrap_err();
        assert!(e.to_string().contains("data frame of 1048577 bytes is over the limit"), "{e}");
        let mut control = vec![0x80, 3, 0, 1, 0];
        control.extend_from_slice(&length_bytes(0x00ff_ffff));
        let e = read_frame(&mut control.as_slice()).await.unwrap_err();
        assert!(e.to_string().contains("control frame"), "{e}");
        // At the cap: read as usual.
        let mut ok = data_frame(1, 0, &vec![7u8; MAX_DATA_FRAME]);
        ok.truncate(8 + MAX_DATA_FRAME);
        assert!(matches!(read_frame(&mut ok.as_slice()).await, Ok(Some(Frame::Data { .. }))));
        assert!(parse_headers(&[0, 0, 0, 5, 0]).is_err());
    }
}
