//! Format versions: what a node writes to its peers and to its store file, and what it reads.
//!
//! Peer messages:
//! - format 1 (every release before formats existed): a message is its bare postcard
//!   encoding, sent under the plain service name (`raft.append`).
//! - format 2: the same payload framed as `"sf" | format (u16 BE) | payload`, sent under the
//!   service name with [`FRAMED_SUFFIX`] (`raft.append/v`). A receiver reads the format before
//!   anything else and refuses, with a clear error, a format newer than it knows.
//!
//! A node writes the lowest format every member of the group reads (the cluster format, from
//! the `format` each member gossips; a member that gossips none reads format 1), so an older
//! node is never sent what it cannot read. Replies use the format of their request.
//!
//! Raft entries: each [`crate::raft_types::Command`] names the lowest format that can apply it
//! ([`crate::raft_types::Command::format`]); a node refuses to propose one above the cluster
//! format ([`crate::Error::FormatGated`]). Every command today is format 1.
//!
//! - format 3: the framing of format 2, plus the pre-vote service (`store.pre_vote/v`). A
//!   node asks its peers for a pre-vote before it stands for election only while every member
//!   reads format 3 (an older member does not serve it; it is then skipped, as before).
//!
//! The store file records its own format ([`STORE_FILE_FORMAT`], key `format` of `raft_meta`);
//! a node refuses to open a file written in a newer one instead of misreading it.
use crate::{Error, Result};

/// The newest peer message format this binary reads and writes.
pub const FORMAT: u32 = 3;
/// The first format whose nodes answer pre-votes: a node asks for them only while every member
/// reads at least this one.
pub const PRE_VOTE_FORMAT: u32 = 3;
/// The oldest peer message format this binary reads and writes.
pub const OLDEST_FORMAT: u32 = 1;
/// The format of the store file (`store.redb`) this binary writes; unchanged since format 1.
pub const STORE_FILE_FORMAT: u32 = 1;

/// Service-name suffix of framed (format 2 and later) messages.
pub const FRAMED_SUFFIX: &str = "/v";

const MAGIC: [u8; 2] = *b"sf";
const HEADER: usize = 4;

/// Frames `payload` as a message of `format` (format 1 is sent bare).
pub(crate) fn frame(format: u32, payload: Vec<u8>) -> Vec<u8> {
    if format < 2 {
        return payload;
    }
    let f = u16::try_from(format).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&f.to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Reads the header of a framed message: its format and its payload. A format this node does
/// not read is [`Error::UnsupportedFormat`].
pub(crate) fn unframe<'a>(what: &'static str, body: &'a [u8]) -> Result<(u32, &'a [u8])> {
    if body.len() < HEADER || body[..2] != MAGIC {
        return Err(Error::Decode { what, reason: "not a framed message (no format header)".into() });
    }
    let format = u32::from(u16::from_be_bytes([body[2], body[3]]));
    check(what, format)?;
    Ok((format, &body[HEADER..]))
}

/// Whether this node reads `format`.
pub(crate) fn check(what: &'static str, format: u32) -> Result<()> {
    if (OLDEST_FORMAT..=FORMAT).contains(&format) {
        Ok(())
    } else {
        Err(Error::UnsupportedFormat { what, found: format, oldest: OLDEST_FORMAT, newest: FORMAT })
    }
}

/// The cluster format to write given the formats the members read (`None`: a member that
/// says nothing, so an older release: format 1). Clamped to what this node writes; with no
/// member known yet (a node still joining), format 1.
pub fn cluster_format(members: impl IntoIterator<Item = Option<u32>>) -> u32 {
    members.into_iter().map(|f| f.unwrap_or(OLDEST_FORMAT)).min().unwrap_or(OLDEST_FORMAT).clamp(OLDEST_FORMAT, FORMAT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_format_one_is_bare() {
        let payload = vec![1, 2, 3];
        assert_eq!(frame(1, payload.clone()), payload, "format 1 is what older releases send");
        let framed = frame(2, payload.clone());
        assert_eq!(&framed[..4], b"sf\0\x02");
        let (f, p) = unframe("test", &framed).unwrap();
        assert_eq!((f, p), (2, payload.as_slice()));
    }

    #[test]
    fn a_future_format_is_refused_cleanly() {
        let mut framed = frame(2, vec![9; 10]);
        framed[3] = 4;
        let e = unframe("vote request", &framed).unwrap_err();
        assert!(matches!(e, Error::UnsupportedFormat { found: 4, newest: FORMAT, .. }), "got {e:?}");
        let msg = e.to_string();
        assert!(msg.contains("format 4") && msg.contains("upgrade"), "{msg}");
        for junk in [&b""[..], b"s", b"sf\0", b"xx\0\x02abc", b"sf\xff\xff"] {
            assert!(unframe("test", junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn cluster_format_is_the_lowest_member_format() {
        assert_eq!(cluster_format([Some(2), Some(2), Some(2)]), 2);
        assert_eq!(cluster_format([Some(2), None, Some(2)]), 1, "a silent member is an older release");
        assert_eq!(cluster_format([Some(2), Some(7)]), 2, "never above what this node writes");
        assert_eq!(cluster_format([Some(0)]), 1);
        assert_eq!(cluster_format([]), 1, "nothing known yet: what every release reads");
        assert_eq!(cluster_format([Some(2)]), 2, "a one-node cluster");
    }
}
