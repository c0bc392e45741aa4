//! The store's public reads and writes, sealing and opening the values under the encrypted
//! prefixes (see [`crate::encryption`]); `shoal secrets-encrypt status|rotate`.
use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::encryption::{Encryption, KeyringRecord, KEYRING_KEY};
use crate::types::{Compare, Kv, Op, Txn, TxnResult, WatchStream};
use crate::{Error, Result, Store};

/// Passes over the encrypted objects a rotation makes at most before it gives up retiring
/// the old keys (each pass re-seals what concurrent writers sealed with an old key).
const ROTATE_PASSES: usize = 5;

/// What `shoal secrets-encrypt status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionStatus {
    /// Whether this node seals values (it was handed a key).
    pub enabled: bool,
    /// The prefixes whose values are sealed.
    pub prefixes: Vec<String>,
    /// The data key new writes are sealed with (None before the first sealed write).
    pub primary: Option<u32>,
    /// Every data key of the keyring: id and creation time (unix seconds).
    pub keys: Vec<(u32, u64)>,
    /// Objects under the prefixes.
    pub objects: u64,
    /// Objects still in plaintext (written before encryption, until a rotation).
    pub plaintext: u64,
    /// Sealed objects by data key id.
    pub by_key: BTreeMap<u32, u64>,
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateOutcome {
    /// The new primary data key.
    pub key: u32,
    /// Objects sealed again with it (plaintext ones included).
    pub resealed: u64,
    /// Of those, the objects that were plaintext.
    pub were_plaintext: u64,
    /// Data keys removed from the keyring.
    pub retired: Vec<u32>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Store {
    /// Seals the values under `prefixes` from now on with data keys kept in the store and
    /// wrapped with `kek` (32 bytes, never written to the store). Call once, right after
    /// [`Store::open`], on every node with the same `kek`; later calls change nothing.
    pub fn enable_secrets_encryption(&self, kek: &[u8], prefixes: Vec<String>) -> Result<()> {
        let enc = Encryption::new(kek, prefixes)?;
        let _ = self.enc.set(enc);
        Ok(())
    }

    async fn keyring_record(&self) -> Result<Option<(KeyringRecord, u64)>> {
        match self.raw_get(KEYRING_KEY).await? {
            Some(kv) => Ok(Some((decode("secrets keyring", &kv.value)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    /// Writes the keyring if `guard` still holds; whether it did.
    async fn put_keyring(&self, rec: &KeyringRecord, guard: Compare) -> Result<bool> {
        let txn = Txn {
            compares: vec![guard],
            success: vec![Op::Put { key: KEYRING_KEY.into(), value: encode("secrets keyring", rec)?, lease: None }],
            failure: Vec::new(),
        };
        Ok(self.raw_txn(txn).await?.succeeded)
    }

    /// Refreshes `enc`'s keys from the local replica.
    async fn refresh_keys(&self, enc: &Encryption) -> Result<()> {
        let rec = self.keyring_record().await?;
        enc.load(rec.as_ref().map(|(r, rev)| (r, *rev)))
    }

    /// The primary data key, creating the keyring on the first sealed write of a cluster.
    async fn primary_key(&self, enc: &Encryption) -> Result<u32> {
        self.refresh_keys(enc).await?;
        if let Some(id) = enc.primary() {
            return Ok(id);
        }
        let first = KeyringRecord { primary: 1, keys: vec![enc.new_wrapped_key(1, now_secs())?] };
        // Another node may create it at the same time: either way the stored one wins.
        if self.put_keyring(&first, Compare::NotExists { key: KEYRING_KEY.to_string() }).await? {
            tracing::info!("secrets encryption keyring created");
        }
        self.refresh_keys(enc).await?;
        enc.primary()
            .ok_or_else(|| Error::Encryption { key: KEYRING_KEY.into(), reason: "keyring has no primary key".into() })
    }

    fn open_kv(&self, mut kv: Kv) -> Result<Kv> {
        if let Some(enc) = self.enc.get() {
            if enc.covers(&kv.key) {
                kv.value = enc.open(&kv.key, std::mem::take(&mut kv.value))?;
            }
        }
        Ok(kv)
    }

    /// Opens `kv`, reloading the keyring once when it names a key this node has not loaded.
    async fn open_fresh(&self, kv: Kv) -> Result<Kv> {
        if let Some(enc) = self.enc.get() {
            if enc.covers(&kv.key) {
                if let Some(id) = Encryption::key_id(&kv.value) {
                    if !enc.has_key(id) {
                        self.refresh_keys(enc).await?;
                    }
                }
            }
        }
        self.open_kv(kv)
    }

    /// One key from the local replica.
    pub async fn get(&self, key: &str) -> Result<Option<Kv>> {
        match self.raw_get(key).await? {
            Some(kv) => Ok(Some(self.open_fresh(kv).await?)),
            None => Ok(None),
        }
    }

    /// Every key under `prefix` from the local replica, with the revision they were read at.
    pub async fn range(&self, prefix: &str) -> Result<(Vec<Kv>, u64)> {
        let (kvs, rev) = self.raw_range(prefix).await?;
        if !self.enc.get().is_some_and(|e| e.overlaps(prefix)) {
            return Ok((kvs, rev));
        }
        let mut out = Vec::with_capacity(kvs.len());
        for kv in kvs {
            out.push(self.open_fresh(kv).await?);
        }
        Ok((out, rev))
    }

    /// Runs a transaction through the leader and waits until it is applied locally.
    pub async fn txn(&self, mut txn: Txn) -> Result<TxnResult> {
        if let Some(enc) = self.enc.get() {
            let sealed = txn.success.iter().chain(txn.failure.iter()).any(|op| match op {
                Op::Put { key, .. } => enc.covers(key),
                _ => false,
            });
            if sealed {
                let id = self.primary_key(enc).await?;
                for op in txn.success.iter_mut().chain(txn.failure.iter_mut()) {
                    if let Op::Put { key, value, .. } = op {
                        if enc.covers(key) {
                            *value = enc.seal_with(id, key, value)?;
                        }
                    }
                }
            }
        }
        let mut r = self.raw_txn(txn).await?;
        if self.enc.get().is_some() {
            let mut current = Vec::with_capacity(r.current.len());
            for kv in std::mem::take(&mut r.current) {
                current.push(match kv {
                    Some(kv) => Some(self.open_fresh(kv).await?),
                    None => None,
                });
            }
            r.current = current;
        }
        Ok(r)
    }

    /// A watch stream whose sealed values are opened (a value that does not open ends the
    /// stream with the error, as a store failure would).
    pub(crate) fn opened_watch(&self, mut inner: WatchStream) -> WatchStream {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let store = self.clone();
        tokio::spawn(async move {
            while let Some(item) = inner.recv().await {
                let item = match item {
                    Ok(mut ev) => {
                        let kv = store.open_fresh(ev.kv).await;
                        let prev = match ev.prev.take() {
                            Some(p) => store.open_fresh(p).await.map(Some),
                            None => Ok(None),
                        };
                        match (kv, prev) {
                            (Ok(kv), Ok(prev)) => {
                                ev.kv = kv;
                                ev.prev = prev;
                                Ok(ev)
                            }
                            (Err(e), _) | (_, Err(e)) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                };
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    return;
                }
            }
        });
        rx
    }

    /// How the encrypted objects of the local replica are sealed.
    pub async fn secrets_encryption_status(&self) -> Result<EncryptionStatus> {
        let Some(enc) = self.enc.get() else {
            return Ok(EncryptionStatus {
                enabled: false,
                prefixes: Vec::new(),
                primary: None,
                keys: Vec::new(),
                objects: 0,
                plaintext: 0,
                by_key: BTreeMap::new(),
            });
        };
        let rec = self.keyring_record().await?;
        let mut status = EncryptionStatus {
            enabled: true,
            prefixes: enc.prefixes().to_vec(),
            primary: rec.as_ref().map(|(r, _)| r.primary),
            keys: rec.as_ref().map(|(r, _)| r.keys.iter().map(|k| (k.id, k.created)).collect()).unwrap_or_default(),
            objects: 0,
            plaintext: 0,
            by_key: BTreeMap::new(),
        };
        for prefix in enc.prefixes() {
            for kv in self.raw_range(prefix).await?.0 {
                status.objects += 1;
                match Encryption::key_id(&kv.value) {
                    Some(id) => *status.by_key.entry(id).or_default() += 1,
                    None => status.plaintext += 1,
                }
            }
        }
        Ok(status)
    }

    /// Adds a new primary data key, seals every object under the encrypted prefixes with it
    /// (plaintext ones too), then removes the keys no object uses any more. Old keys stay
    /// until every object is sealed with the new one, so reads work throughout.
    pub async fn rotate_secrets_key(&self) -> Result<RotateOutcome> {
        let enc = self.enc.get().ok_or(Error::Encryption {
            key: String::new(),
            reason: "this node was started without a secrets encryption key".into(),
        })?;
        // 1. The new key, primary from now on.
        let mut attempt = 0;
        let (new_id, old_ids) = loop {
            attempt += 1;
            let current = self.keyring_record().await?;
            let (mut rec, compare) = match current {
                Some((r, rev)) => (r, Compare::ModRevision { key: KEYRING_KEY.into(), revision: rev }),
                None => (KeyringRecord::default(), Compare::NotExists { key: KEYRING_KEY.into() }),
            };
            let old_ids: Vec<u32> = rec.keys.iter().map(|k| k.id).collect();
            let id = old_ids.iter().max().copied().unwrap_or(0) + 1;
            rec.keys.push(enc.new_wrapped_key(id, now_secs())?);
            rec.primary = id;
            if self.put_keyring(&rec, compare).await? {
                break (id, old_ids);
            }
            if attempt >= 5 {
                return Err(Error::Encryption {
                    key: KEYRING_KEY.into(),
                    reason: "the keyring kept changing (another rotation running?)".into(),
                });
            }
        };
        self.refresh_keys(enc).await?;
        tracing::info!(key = new_id, "secrets encryption key added");
        // 2. Seal everything again; repeat until a pass finds nothing sealed otherwise (a
        // write racing with the pass may have used the old key).
        let mut resealed = 0;
        let mut were_plaintext = 0;
        let mut clean = false;
        for pass in 0..ROTATE_PASSES {
            if pass > 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let mut changed = 0;
            for prefix in enc.prefixes().to_vec() {
                for kv in self.raw_range(&prefix).await?.0 {
                    let id = Encryption::key_id(&kv.value);
                    if id == Some(new_id) {
                        continue;
                    }
                    changed += 1;
                    let (key, rev, lease) = (kv.key.clone(), kv.mod_revision, kv.lease);
                    let plain = self.open_fresh(kv).await?;
                    let sealed = enc.seal_with(new_id, &key, &plain.value)?;
                    let txn = Txn {
                        compares: vec![Compare::ModRevision { key: key.clone(), revision: rev }],
                        success: vec![Op::Put { key, value: sealed, lease }],
                        failure: Vec::new(),
                    };
                    // A concurrent update wins; the next pass looks at it again.
                    if self.raw_txn(txn).await?.succeeded {
                        resealed += 1;
                        if id.is_none() {
                            were_plaintext += 1;
                        }
                    }
                }
            }
            if changed == 0 {
                clean = true;
                break;
            }
        }
        // 3. Retire the old keys no object uses.
        let mut retired = Vec::new();
        if clean {
            for _ in 0..5 {
                let Some((mut rec, rev)) = self.keyring_record().await? else { break };
                let before: Vec<u32> = rec.keys.iter().map(|k| k.id).collect();
                rec.keys.retain(|k| !old_ids.contains(&k.id) || k.id == rec.primary);
                retired = before.into_iter().filter(|id| !rec.keys.iter().any(|k| k.id == *id)).collect();
                if self.put_keyring(&rec, Compare::ModRevision { key: KEYRING_KEY.into(), revision: rev }).await? {
                    break;
                }
                retired.clear();
            }
        }
        self.refresh_keys(enc).await?;
        tracing::info!(key = new_id, resealed, were_plaintext, ?retired, "secrets encryption key rotated");
        Ok(RotateOutcome { key: new_id, resealed, were_plaintext, retired })
    }
}
