//! Encryption at rest of chosen keys (the daemon's Secrets): AES-256-GCM.
//!
//! Values under the encrypted prefixes are sealed by the node that proposes the write, so the
//! Raft log, the state machine, the watch history, snapshots and backups only ever hold the
//! ciphertext. Each value is sealed with a data key (DEK); the DEKs live in the store itself
//! (key [`KEYRING_KEY`], replicated like any object) wrapped with the cluster's key-encryption
//! key (KEK), which never enters the store: the daemon hands it over from the cluster secrets
//! of its data dir. A copy of `store.redb` or a backup alone reveals no Secret.
//!
//! A sealed value is `MAGIC | key id (u32 BE) | nonce (12) | ciphertext | tag`, authenticated
//! with the object's store key, so a sealed value moved under another key does not open.
//! Values without the magic are plaintext (written before encryption existed) and are read
//! as they are; [`crate::Store::rotate_secrets_key`] seals them.
use std::collections::BTreeMap;
use std::sync::Mutex;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Store key of the wrapped data keys.
pub const KEYRING_KEY: &str = "/shoal/secrets-encryption/keyring";
/// Prefix of every sealed value.
pub(crate) const MAGIC: &[u8] = b"shoal:enc:aesgcm:v1:";
const KEY_LEN: usize = 32;

/// The keyring as stored: data keys wrapped with the KEK.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct KeyringRecord {
    pub primary: u32,
    pub keys: Vec<WrappedKey>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WrappedKey {
    pub id: u32,
    /// Unix seconds.
    pub created: u64,
    /// nonce | AES-256-GCM(KEK, DEK) | tag.
    pub sealed: Vec<u8>,
}

/// The unwrapped keyring of one revision of [`KEYRING_KEY`].
struct Keyring {
    mod_revision: u64,
    primary: u32,
    keys: BTreeMap<u32, LessSafeKey>,
}

/// The encryption of one store handle (shared by its clones).
pub(crate) struct Encryption {
    kek: LessSafeKey,
    prefixes: Vec<String>,
    cache: Mutex<Option<Keyring>>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryption").field("prefixes", &self.prefixes).finish_non_exhaustive()
    }
}

fn aead_key(bytes: &[u8]) -> Result<LessSafeKey> {
    let k = UnboundKey::new(&AES_256_GCM, bytes)
        .map_err(|_| Error::Encryption { key: String::new(), reason: "a key must be 32 bytes".into() })?;
    Ok(LessSafeKey::new(k))
}

fn enc_err(key: &str, reason: impl Into<String>) -> Error {
    Error::Encryption { key: key.to_string(), reason: reason.into() }
}

fn wrap_aad(id: u32) -> Vec<u8> {
    format!("shoal secrets-encryption keyring {id}").into_bytes()
}

/// Derives a 32-byte key from a cluster secret (HKDF-SHA256), for data dirs written before
/// the cluster secrets held a dedicated key.
pub fn derive_key(secret: &[u8], purpose: &str) -> [u8; KEY_LEN] {
    struct Len;
    impl ring::hkdf::KeyType for Len {
        fn len(&self) -> usize {
            KEY_LEN
        }
    }
    let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"shoal");
    let prk = salt.extract(secret);
    let info = [purpose.as_bytes()];
    let mut out = [0u8; KEY_LEN];
    // Cannot fail: 32 bytes is far below HKDF-SHA256's limit of 255 * 32.
    if let Ok(okm) = prk.expand(&info, Len) {
        let _ = okm.fill(&mut out);
    }
    out
}

impl Encryption {
    pub(crate) fn new(kek: &[u8], prefixes: Vec<String>) -> Result<Self> {
        Ok(Encryption { kek: aead_key(kek)?, prefixes, cache: Mutex::new(None), rng: SystemRandom::new() })
    }

    /// Whether values under `key` are sealed.
    pub(crate) fn covers(&self, key: &str) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    /// Whether a watch or range of `prefix` may return sealed values.
    pub(crate) fn overlaps(&self, prefix: &str) -> bool {
        self.prefixes.iter().any(|p| p.starts_with(prefix) || prefix.starts_with(p.as_str()))
    }

    pub(crate) fn prefixes(&self) -> &[String] {
        &self.prefixes
    }

    fn nonce(&self) -> Result<[u8; NONCE_LEN]> {
        let mut n = [0u8; NONCE_LEN];
        self.rng.fill(&mut n).map_err(|_| enc_err("", "no randomness for a nonce"))?;
        Ok(n)
    }

    /// A new random data key wrapped with the KEK.
    pub(crate) fn new_wrapped_key(&self, id: u32, created: u64) -> Result<WrappedKey> {
        let mut dek = [0u8; KEY_LEN];
        self.rng.fill(&mut dek).map_err(|_| enc_err("", "no randomness for a key"))?;
        let nonce = self.nonce()?;
        let mut buf = dek.to_vec();
        self.kek
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(wrap_aad(id)), &mut buf)
            .map_err(|_| enc_err("", "cannot wrap a data key"))?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&buf);
        Ok(WrappedKey { id, created, sealed })
    }

    fn unwrap_key(&self, w: &WrappedKey) -> Result<LessSafeKey> {
        if w.sealed.len() < NONCE_LEN {
            return Err(enc_err(KEYRING_KEY, format!("data key {} is truncated", w.id)));
        }
        let (nonce, ct) = w.sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| enc_err(KEYRING_KEY, "bad nonce"))?;
        let mut buf = ct.to_vec();
        let dek = self.kek.open_in_place(nonce, Aad::from(wrap_aad(w.id)), &mut buf).map_err(|_| {
            enc_err(
                KEYRING_KEY,
                format!(
                    "data key {} does not open with this node's key-encryption key \
                     (secrets.json of another cluster?)",
                    w.id
                ),
            )
        })?;
        aead_key(dek)
    }

    /// Takes the keyring record read at `mod_revision` (0: absent) unless the cache has it.
    pub(crate) fn load(&self, record: Option<(&KeyringRecord, u64)>) -> Result<()> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let rev = record.map_or(0, |(_, r)| r);
        if cache.as_ref().is_some_and(|c| c.mod_revision == rev) {
            return Ok(());
        }
        let mut keys = BTreeMap::new();
        let mut primary = 0;
        if let Some((rec, _)) = record {
            for w in &rec.keys {
                keys.insert(w.id, self.unwrap_key(w)?);
            }
            primary = rec.primary;
        }
        *cache = Some(Keyring { mod_revision: rev, primary, keys });
        Ok(())
    }

    /// The cached primary key id, if the cache holds one.
    pub(crate) fn primary(&self) -> Option<u32> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.as_ref().filter(|c| c.keys.contains_key(&c.primary)).map(|c| c.primary)
    }

    pub(crate) fn has_key(&self, id: u32) -> bool {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.as_ref().is_some_and(|c| c.keys.contains_key(&id))
    }

    /// Seals `value` for store key `key` with data key `id`.
    pub(crate) fn seal_with(&self, id: u32, key: &str, value: &[u8]) -> Result<Vec<u8>> {
        let nonce = self.nonce()?;
        let mut buf = value.to_vec();
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            let dek = cache
                .as_ref()
                .and_then(|c| c.keys.get(&id))
                .ok_or_else(|| enc_err(key, format!("no data key {id}")))?;
            dek.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(key.as_bytes()), &mut buf)
                .map_err(|_| enc_err(key, "cannot seal"))?;
        }
        let mut out = Vec::with_capacity(MAGIC.len() + 4 + NONCE_LEN + buf.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// The data key id a sealed value names; None for plaintext.
    pub(crate) fn key_id(value: &[u8]) -> Option<u32> {
        let rest = value.strip_prefix(MAGIC)?;
        let id: [u8; 4] = rest.get(..4)?.try_into().ok()?;
        Some(u32::from_be_bytes(id))
    }

    /// Opens a value read under `key`; plaintext is returned as it is.
    pub(crate) fn open(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>> {
        let Some(id) = Self::key_id(&value) else {
            return Ok(value);
        };
        let body = &value[MAGIC.len() + 4..];
        if body.len() < NONCE_LEN {
            return Err(enc_err(key, "sealed value is truncated"));
        }
        let (nonce, ct) = body.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| enc_err(key, "bad nonce"))?;
        let mut buf = ct.to_vec();
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let dek = cache
            .as_ref()
            .and_then(|c| c.keys.get(&id))
            .ok_or_else(|| enc_err(key, format!("sealed with data key {id}, which this node does not hold")))?;
        let n = dek
            .open_in_place(nonce, Aad::from(key.as_bytes()), &mut buf)
            .map_err(|_| enc_err(key, format!("does not open with data key {id} (damaged or moved)")))?
            .len();
        buf.truncate(n);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc() -> Encryption {
        let e = Encryption::new(&[7u8; 32], vec!["/core/secrets/".into()]).unwrap();
        let rec = KeyringRecord { primary: 1, keys: vec![e.new_wrapped_key(1, 0).unwrap()] };
        e.load(Some((&rec, 5))).unwrap();
        e
    }

    #[test]
    fn seal_open_round_trip_and_binding_to_the_key() {
        let e = enc();
        let sealed = e.seal_with(1, "/core/secrets/a/b", b"hunter2").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(e.open("/core/secrets/a/b", sealed.clone()).unwrap(), b"hunter2");
        // Moved under another key: refused.
        assert!(e.open("/core/secrets/a/c", sealed.clone()).is_err());
        // Tampered: refused.
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(e.open("/core/secrets/a/b", bad).is_err());
        // Truncated: refused, no panic.
        for n in 0..sealed.len() {
            let _ = e.open("/core/secrets/a/b", sealed[..n].to_vec());
        }
        // Plaintext passes through.
        assert_eq!(e.open("/core/secrets/a/b", b"{}".to_vec()).unwrap(), b"{}");
    }

    #[test]
    fn another_kek_cannot_unwrap_the_keyring() {
        let e = Encryption::new(&[7u8; 32], vec![]).unwrap();
        let rec = KeyringRecord { primary: 1, keys: vec![e.new_wrapped_key(1, 0).unwrap()] };
        let other = Encryption::new(&[8u8; 32], vec![]).unwrap();
        assert!(other.load(Some((&rec, 1))).is_err());
    }

    #[test]
    fn derived_keys_differ_by_secret_and_purpose() {
        assert_ne!(derive_key(b"a", "x"), derive_key(b"b", "x"));
        assert_ne!(derive_key(b"a", "x"), derive_key(b"a", "y"));
        assert_eq!(derive_key(b"a", "x"), derive_key(b"a", "x"));
    }
}
