//! The gossip key: every gossip datagram is sealed with ChaCha20-Poly1305 under a cluster key.
//!
//! Wire format of a sealed datagram:
//!
//! ```text
//! 0xC5 | key id (1 byte, 1..=255) | nonce (12 random bytes) | ciphertext | tag (16 bytes)
//! ```
//!
//! The first two bytes are authenticated as associated data. The key id lets a keyring hold
//! several keys while a rotation is under way: receivers accept every key of their ring,
//! senders use the primary one. A datagram that does not verify is dropped and counted.
//!
//! A cluster created before gossip keys existed has an empty ring that sends and accepts
//! plaintext, until `shoal gossip-key rotate` moves it to a key (see docs/gossip.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// First byte of a sealed datagram (chitchat's own datagrams start with 0x53).
pub const SEALED_MARKER: u8 = 0xC5;
/// Bytes a sealed datagram adds to chitchat's.
pub const OVERHEAD: usize = 2 + NONCE_LEN + TAG_LEN;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;

/// One gossip key, as kept in the cluster secrets (the key as 64 hex characters).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipKey {
    pub id: u8,
    pub key: String,
}

impl std::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipKey").field("id", &self.id).field("key", &"<redacted>").finish()
    }
}

impl GossipKey {
    /// A new random key with the given id.
    pub fn generate(id: u8) -> Self {
        let mut key = [0u8; KEY_LEN];
        // SystemRandom only fails when the OS has no entropy source at all.
        if SystemRandom::new().fill(&mut key).is_err() {
            key = rand::random();
        }
        Self { id, key: hex::encode(key) }
    }

    fn aead(&self) -> Option<LessSafeKey> {
        let bytes = hex::decode(&self.key).ok()?;
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &bytes).ok()?;
        Some(LessSafeKey::new(unbound))
    }
}

/// The gossip keys of a cluster. Kept with the cluster secrets; it reaches a joining node
/// in the join exchange and other members over the mutual-TLS peer transport, never over
/// gossip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipKeyring {
    /// Grows with every change; a node takes a keyring from a peer only when it is newer.
    pub epoch: u64,
    /// Keys accepted on receive.
    pub keys: Vec<GossipKey>,
    /// The key id senders use; `None` sends plaintext (a cluster that has no key yet).
    pub primary: Option<u8>,
    /// Whether plaintext datagrams are accepted (only before the first key is in use).
    pub accept_plaintext: bool,
}

impl Default for GossipKeyring {
    /// The keyring of a data dir written before gossip keys existed: plaintext only.
    fn default() -> Self {
        Self { epoch: 0, keys: Vec::new(), primary: None, accept_plaintext: true }
    }
}

impl GossipKeyring {
    /// The keyring of a new cluster: one key, in use, plaintext refused.
    pub fn generate() -> Self {
        Self { epoch: 1, keys: vec![GossipKey::generate(1)], primary: Some(1), accept_plaintext: false }
    }

    /// Whether gossip is sealed and nothing else is accepted.
    pub fn is_sealed(&self) -> bool {
        self.primary.is_some() && !self.accept_plaintext
    }

    /// Ids of the keys in the ring.
    pub fn key_ids(&self) -> Vec<u8> {
        self.keys.iter().map(|k| k.id).collect()
    }

    /// Rotation step 1: a new key is accepted everywhere (the primary stays).
    /// The new id follows the highest one in use, wrapping within 1..=255.
    pub fn with_new_key(&self) -> Self {
        let last = self.primary.or_else(|| self.keys.iter().map(|k| k.id).max()).unwrap_or(0);
        let mut id = if last == u8::MAX { 1 } else { last + 1 };
        while self.keys.iter().any(|k| k.id == id) {
            id = if id == u8::MAX { 1 } else { id + 1 };
        }
        let mut next = self.clone();
        next.epoch += 1;
        next.keys.push(GossipKey::generate(id));
        next
    }

    /// Rotation step 2: senders switch to key `id`.
    pub fn with_primary(&self, id: u8) -> Self {
        let mut next = self.clone();
        next.epoch += 1;
        next.primary = Some(id);
        next
    }

    /// Rotation step 3: every key but the primary is retired, and plaintext is refused.
    pub fn retired(&self) -> Self {
        let mut next = self.clone();
        next.epoch += 1;
        next.keys.retain(|k| Some(k.id) == self.primary);
        next.accept_plaintext = self.primary.is_none();
        next
    }

    /// Checks that every key decodes and the primary is in the ring.
    pub fn validate(&self) -> Result<(), String> {
        for key in &self.keys {
            if key.id == 0 {
                return Err("gossip key id 0 is reserved".to_string());
            }
            if key.aead().is_none() {
                return Err(format!("gossip key {} is not 64 hex characters", key.id));
            }
        }
        if let Some(primary) = self.primary {
            if !self.keys.iter().any(|k| k.id == primary) {
                return Err(format!("primary gossip key {primary} is not in the keyring"));
            }
        }
        Ok(())
    }
}

/// Why a datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not sealed, and this ring refuses plaintext.
    Plaintext,
    /// Shorter than a sealed header and tag.
    Truncated,
    /// Sealed with a key id this ring does not hold.
    UnknownKey(u8),
    /// The tag does not verify (tampered, or sealed with another key of the same id).
    BadTag,
}

/// A keyring ready to seal and open datagrams, with the counters of what it refused.
/// Cheap to clone; clones share the ring and the counters.
#[derive(Clone)]
pub struct Sealer {
    inner: Arc<SealerInner>,
}

struct SealerInner {
    ring: RwLock<Ready>,
    rng: SystemRandom,
    dropped: AtomicU64,
    dropped_plaintext: AtomicU64,
    opened: AtomicU64,
}

struct Ready {
    keyring: GossipKeyring,
    keys: Vec<(u8, LessSafeKey)>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ready = read(&self.inner.ring);
        f.debug_struct("Sealer")
            .field("keys", &ready.keyring.key_ids())
            .field("primary", &ready.keyring.primary)
            .finish()
    }
}

/// Counters of a [`Sealer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct SealStats {
    /// Datagrams that did not verify and were dropped (plaintext ones included).
    pub dropped: u64,
    /// Of those, the plaintext ones.
    pub dropped_plaintext: u64,
    /// Datagrams accepted.
    pub accepted: u64,
}

impl Sealer {
    pub fn new(keyring: GossipKeyring) -> Result<Self, String> {
        let ready = Ready::new(keyring)?;
        Ok(Self {
            inner: Arc::new(SealerInner {
                ring: RwLock::new(ready),
                rng: SystemRandom::new(),
                dropped: AtomicU64::new(0),
                dropped_plaintext: AtomicU64::new(0),
                opened: AtomicU64::new(0),
            }),
        })
    }

    /// Replaces the keyring (takes effect for the next datagram).
    pub fn set_keyring(&self, keyring: GossipKeyring) -> Result<(), String> {
        let ready = Ready::new(keyring)?;
        *write(&self.inner.ring) = ready;
        Ok(())
    }

    pub fn keyring(&self) -> GossipKeyring {
        read(&self.inner.ring).keyring.clone()
    }

    pub fn stats(&self) -> SealStats {
        SealStats {
            dropped: self.inner.dropped.load(Ordering::Relaxed),
            dropped_plaintext: self.inner.dropped_plaintext.load(Ordering::Relaxed),
            accepted: self.inner.opened.load(Ordering::Relaxed),
        }
    }

    /// Seals a chitchat datagram with the primary key (returns it as is without one).
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let ready = read(&self.inner.ring);
        let Some((id, key)) = ready.primary() else {
            return plain.to_vec();
        };
        let mut nonce = [0u8; NONCE_LEN];
        if self.inner.rng.fill(&mut nonce).is_err() {
            nonce = rand::random();
        }
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
        out.extend_from_slice(&[SEALED_MARKER, id]);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        // Sealing only fails for inputs over 256 GiB.
        let sealed = key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from([SEALED_MARKER, id]),
            &mut body,
        );
        if sealed.is_err() {
            return Vec::new();
        }
        out.extend_from_slice(&body);
        out
    }

    /// Opens a datagram: the chitchat bytes inside, or why it is refused (and counted).
    pub fn open(&self, datagram: &[u8]) -> Result<Vec<u8>, Reject> {
        let result = read(&self.inner.ring).open(datagram);
        match result {
            Ok(_) => self.inner.opened.fetch_add(1, Ordering::Relaxed),
            Err(Reject::Plaintext) => {
                self.inner.dropped_plaintext.fetch_add(1, Ordering::Relaxed);
                self.inner.dropped.fetch_add(1, Ordering::Relaxed)
            }
            Err(_) => self.inner.dropped.fetch_add(1, Ordering::Relaxed),
        };
        result
    }
}

impl Ready {
    fn new(keyring: GossipKeyring) -> Result<Self, String> {
        keyring.validate()?;
        let keys = keyring.keys.iter().filter_map(|k| k.aead().map(|aead| (k.id, aead))).collect();
        Ok(Self { keyring, keys })
    }

    fn primary(&self) -> Option<(u8, &LessSafeKey)> {
        let id = self.keyring.primary?;
        self.keys.iter().find(|(k, _)| *k == id).map(|(k, key)| (*k, key))
    }

    fn open(&self, datagram: &[u8]) -> Result<Vec<u8>, Reject> {
        if datagram.first() != Some(&SEALED_MARKER) {
            return if self.keyring.accept_plaintext { Ok(datagram.to_vec()) } else { Err(Reject::Plaintext) };
        }
        if datagram.len() < OVERHEAD {
            return Err(Reject::Truncated);
        }
        let id = datagram[1];
        let Some((_, key)) = self.keys.iter().find(|(k, _)| *k == id) else {
            return Err(Reject::UnknownKey(id));
        };
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&datagram[2..2 + NONCE_LEN]);
        let mut body = datagram[2 + NONCE_LEN..].to_vec();
        let plain = key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from([SEALED_MARKER, id]), &mut body)
            .map_err(|_| Reject::BadTag)?;
        Ok(plain.to_vec())
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sealer(ring: &GossipKeyring) -> Sealer {
        Sealer::new(ring.clone()).unwrap()
    }

    #[test]
    fn sealed_datagrams_round_trip_and_hide_the_payload() {
        let ring = GossipKeyring::generate();
        let s = sealer(&ring);
        let plain = b"node-a heartbeat 42 ready=true";
        let sealed = s.seal(plain);
        assert_eq!(sealed.len(), plain.len() + OVERHEAD);
        assert_eq!(sealed[0], SEALED_MARKER);
        assert_eq!(sealed[1], 1);
        assert!(!sealed.windows(6).any(|w| w == b"node-a"), "the payload is encrypted");
        assert_eq!(s.open(&sealed).unwrap(), plain);
        // Two seals of the same payload differ (random nonce).
        assert_ne!(s.seal(plain), sealed);
        assert_eq!(s.stats(), SealStats { dropped: 0, dropped_plaintext: 0, accepted: 1 });
    }

    #[test]
    fn tampered_truncated_unknown_key_and_plaintext_are_rejected_and_counted() {
        let ring = GossipKeyring::generate();
        let s = sealer(&ring);
        let sealed = s.seal(b"hello gossip");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(s.open(&bad).is_err(), "flipping a bit of byte {i} must be caught");
        }
        assert_eq!(s.open(&sealed[..sealed.len() - 1]), Err(Reject::BadTag));
        assert_eq!(s.open(&sealed[..OVERHEAD - 1]), Err(Reject::Truncated));
        assert_eq!(s.open(&[SEALED_MARKER]), Err(Reject::Truncated));
        let mut other_id = sealed.clone();
        other_id[1] = 7;
        assert_eq!(s.open(&other_id), Err(Reject::UnknownKey(7)));
        assert_eq!(s.open(b"\x53\xb0\x00\x03"), Err(Reject::Plaintext));
        assert_eq!(s.open(b""), Err(Reject::Plaintext));
        let stats = s.stats();
        assert_eq!(stats.accepted, 0);
        // Two plaintext datagrams, and the sealed one whose marker byte was flipped.
        assert_eq!(stats.dropped_plaintext, 3);
        assert_eq!(stats.dropped, sealed.len() as u64 + 6);
    }

    #[test]
    fn a_datagram_of_another_key_with_the_same_id_is_rejected() {
        // Another cluster (or an attacker) with key id 1 but another key.
        let ours = sealer(&GossipKeyring::generate());
        let theirs = sealer(&GossipKeyring::generate());
        let forged = theirs.seal(b"fake member");
        assert_eq!(ours.open(&forged), Err(Reject::BadTag));
    }

    #[test]
    fn a_datagram_replayed_to_another_key_id_is_rejected() {
        // A datagram sealed under key 1, its header rewritten to claim key 2 of a ring that
        // holds both: the id is authenticated, so it does not verify under key 2.
        let one = GossipKeyring::generate();
        let both = one.with_new_key();
        let s = sealer(&both);
        let mut sealed = s.seal(b"payload");
        assert_eq!(sealed[1], 1);
        assert!(s.open(&sealed).is_ok());
        sealed[1] = 2;
        assert_eq!(s.open(&sealed), Err(Reject::BadTag));
    }

    #[test]
    fn rotation_keeps_every_step_readable_by_the_previous_one() {
        let old = GossipKeyring::generate();
        let installed = old.with_new_key();
        let switched = installed.with_primary(2);
        let retired = switched.retired();
        assert_eq!(retired.key_ids(), vec![2]);
        assert!(retired.is_sealed());
        assert!(old.epoch < installed.epoch && installed.epoch < switched.epoch && switched.epoch < retired.epoch);
        // A node still on `old` sends key 1: nodes on `installed` and `switched` accept it.
        let from_old = sealer(&old).seal(b"x");
        assert!(sealer(&installed).open(&from_old).is_ok());
        assert!(sealer(&switched).open(&from_old).is_ok());
        // A node on `switched` sends key 2: nodes on `installed` accept it.
        let from_switched = sealer(&switched).seal(b"x");
        assert!(sealer(&installed).open(&from_switched).is_ok());
        assert!(sealer(&retired).open(&from_switched).is_ok());
        // Once retired, key 1 is refused.
        assert_eq!(sealer(&retired).open(&from_old), Err(Reject::UnknownKey(1)));
    }

    #[test]
    fn a_plaintext_cluster_moves_to_a_key_without_a_gap() {
        let legacy = GossipKeyring::default();
        assert!(!legacy.is_sealed());
        let plain = sealer(&legacy).seal(b"\x53\xb0hello");
        assert_eq!(plain, b"\x53\xb0hello");
        let installed = legacy.with_new_key();
        assert_eq!(installed.key_ids(), vec![1]);
        assert!(sealer(&installed).open(&plain).is_ok(), "plaintext is still accepted while the key spreads");
        let switched = installed.with_primary(1);
        let sealed = sealer(&switched).seal(b"\x53\xb0hello");
        assert!(sealer(&installed).open(&sealed).is_ok());
        let retired = switched.retired();
        assert!(retired.is_sealed());
        assert_eq!(sealer(&retired).open(&plain), Err(Reject::Plaintext));
    }

    #[test]
    fn key_ids_wrap_and_skip_ids_in_use() {
        let mut ring = GossipKeyring::generate();
        ring.keys[0].id = 255;
        ring.primary = Some(255);
        let next = ring.with_new_key();
        assert_eq!(next.key_ids(), vec![255, 1]);
        assert!(next.validate().is_ok());
    }

    #[test]
    fn a_bad_keyring_is_refused() {
        let mut ring = GossipKeyring::generate();
        ring.keys[0].key = "zz".to_string();
        assert!(Sealer::new(ring).is_err());
        let mut ring = GossipKeyring::generate();
        ring.primary = Some(9);
        assert!(Sealer::new(ring).is_err());
        let mut ring = GossipKeyring::generate();
        ring.keys[0].id = 0;
        ring.primary = Some(0);
        assert!(Sealer::new(ring).is_err());
    }

    proptest! {
        #[test]
        fn random_bytes_never_verify_and_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let s = sealer(&GossipKeyring::generate());
            prop_assert!(s.open(&bytes).is_err());
            let mut sealed_looking = vec![SEALED_MARKER, 1];
            sealed_looking.extend_from_slice(&bytes);
            prop_assert!(s.open(&sealed_looking).is_err());
        }

        #[test]
        fn any_tampering_of_a_sealed_datagram_is_caught(
            payload in proptest::collection::vec(any::<u8>(), 0..512),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
            cut in any::<prop::sample::Index>(),
        ) {
            let s = sealer(&GossipKeyring::generate());
            let sealed = s.seal(&payload);
            prop_assert_eq!(s.open(&sealed).unwrap(), payload.clone());
            let mut bad = sealed.clone();
            let i = at.index(bad.len());
            bad[i] ^= flip;
            prop_assert!(s.open(&bad).is_err());
            let short = &sealed[..cut.index(sealed.len())];
            prop_assert!(s.open(short).is_err());
        }
    }
}
