//! Binary encoding of records in redb and of messages between peers (postcard).
//! Decoding never panics: a bad record or message is an [`Error::Decode`].
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Error, Result};

/// Largest message a peer may send in one RPC body.
pub(crate) const MAX_RPC_BYTES: usize = 64 << 20;

pub(crate) fn encode<T: Serialize + ?Sized>(what: &'static str, v: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(v).map_err(|e| Error::Decode { what, reason: format!("encode: {e}") })
}

pub(crate) fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    if bytes.len() > MAX_RPC_BYTES {
        return Err(Error::TooLarge { what, size: bytes.len(), limit: MAX_RPC_BYTES });
    }
    postcard::from_bytes(bytes).map_err(|e| Error::Decode { what, reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Op, Txn};

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for len in 0..64usize {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = decode::<Txn>("txn", &junk);
        }
        let huge_len = [0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(decode::<Vec<Txn>>("txn", &huge_len).is_err());
    }

    #[test]
    fn txn_round_trips() {
        let t = Txn::ops(vec![Op::Put { key: "/a".into(), value: vec![1, 2, 3], lease: Some(7) }]);
        let b = encode("txn", &t).unwrap();
        assert_eq!(decode::<Txn>("txn", &b).unwrap(), t);
    }
}
