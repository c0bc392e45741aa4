//! Join tokens as bootstrap credentials, as kubeadm's: each has an id, an optional expiry and
//! an optional number of uses; the replicated store keeps only a hash of its secret, under
//! `/shoal/join-tokens/<id>`. A token reads `shoal1.<CA hash>.<id><secret>`: the first 8 hex
//! characters of the last part are the id (shown by `shoal token list`), the other 24 the
//! secret. A deleted token leaves a tombstone for a week, so a joiner holding it learns why it
//! is refused.
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use futures::FutureExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shoal_gossip::pki::JoinToken;
use shoal_gossip::transport::{JoinRequest, Transport};
use shoal_store::{Compare, Op, Store, Txn};

pub(crate) const PREFIX: &str = "/shoal/join-tokens/";
/// The token `shoal token` prints, kept in the data dir (0600) so the same one is printed
/// again until it expires.
pub(crate) const DEFAULT_TOKEN_FILE: &str = "join-token";
/// Lifetime of a token when `--ttl` is not given.
pub(crate) const DEFAULT_TTL_SECS: u64 = 24 * 3600;
const ID_LEN: usize = 8;
/// `shoal token` makes a new token when the one it printed last has less than this left.
const RENEW_BEFORE_SECS: i64 = 3600;
/// Tombstones and expired records are dropped this long after they stopped working.
const KEEP_DEAD_SECS: i64 = 7 * 86_400;
const MAX_DESCRIPTION: usize = 256;

/// One join token as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TokenRecord {
    pub id: String,
    /// sha256 (hex) of the token's whole last part (id and secret).
    pub secret_sha256: String,
    #[serde(default)]
    pub description: String,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds; None: never expires.
    pub expires: Option<i64>,
    /// None: any number of joins.
    pub max_uses: Option<u32>,
    #[serde(default)]
    pub used: u32,
    /// Unix seconds of `shoal token delete`.
    #[serde(default)]
    pub deleted: Option<i64>,
}

/// Why a token does not admit a node; the `Display` is what the joiner reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("invalid join token")]
    Unknown,
    #[error("join token {id} expired at {at}: make a new one with `shoal token create`")]
    Expired { id: String, at: String },
    #[error("join token {id} is used up ({uses} of {uses} uses): make a new one with `shoal token create`")]
    UsedUp { id: String, uses: u32 },
    #[error("join token {id} was deleted: make a new one with `shoal token create`")]
    Deleted { id: String },
    #[error("checking the join token: {0}")]
    Store(String),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("store")]
    Store(#[source] shoal_store::Error),
    #[error("no join token with id {0:?}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("cluster certificates")]
    Pki(#[source] shoal_gossip::Error),
    #[error("writing {path}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: super::identity::IdentityError,
    },
}

impl From<shoal_store::Error> for TokenError {
    fn from(e: shoal_store::Error) -> Self {
        TokenError::Store(e)
    }
}

pub(crate) fn now_secs() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs).map(|t| t.to_string()).unwrap_or_else(|_| secs.to_string())
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn key(id: &str) -> String {
    format!("{PREFIX}{id}")
}

impl TokenRecord {
    /// Why this record admits nobody at `now`, if it does not.
    fn refusal(&self, now: i64) -> Option<Refusal> {
        let id = self.id.clone();
        if self.deleted.is_some() {
            return Some(Refusal::Deleted { id });
        }
        if let Some(at) = self.expires.filter(|at| *at <= now) {
            return Some(Refusal::Expired { id, at: rfc3339(at) });
        }
        if let Some(uses) = self.max_uses.filter(|max| self.used >= *max) {
            return Some(Refusal::UsedUp { id, uses });
        }
        None
    }

    /// When the record can be forgotten.
    fn dead_since(&self, now: i64) -> Option<i64> {
        if let Some(d) = self.deleted {
            return Some(d);
        }
        self.expires.filter(|at| *at <= now)
    }

    /// The JSON `shoal token list` shows.
    pub(crate) fn view(&self, now: i64) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "description": self.description,
            "created": rfc3339(self.created),
            "expires": self.expires.map(rfc3339),
            "ttl_secs": self.expires.map(|at| (at - now).max(0)),
            "uses": self.used,
            "max_uses": self.max_uses,
            "state": match self.refusal(now) {
                None => "valid",
                Some(Refusal::Expired { .. }) => "expired",
                Some(Refusal::UsedUp { .. }) => "used up",
                Some(_) => "deleted",
            },
        })
    }
}

/// What `shoal token create` asks for.
#[derive(Debug, Clone, Default)]
pub(crate) struct NewToken {
    /// Lifetime in seconds; 0: never expires; None: [`DEFAULT_TTL_SECS`].
    pub ttl_secs: Option<u64>,
    pub max_uses: Option<u32>,
    pub description: String,
}

/// Creates a token; returns it whole (the only time its secret is seen) and its record.
pub(crate) async fn create(
    store: &Store,
    ca_cert_pem: &str,
    req: NewToken,
) -> Result<(String, TokenRecord), TokenError> {
    if req.max_uses == Some(0) {
        return Err(TokenError::Invalid("--uses must be at least 1".into()));
    }
    if req.description.len() > MAX_DESCRIPTION {
        return Err(TokenError::Invalid(format!("--description is longer than {MAX_DESCRIPTION} bytes")));
    }
    let ttl = req.ttl_secs.unwrap_or(DEFAULT_TTL_SECS);
    let ttl = i64::try_from(ttl)
        .ok()
        .filter(|t| *t <= 100 * 365 * 86_400)
        .ok_or_else(|| TokenError::Invalid("--ttl is too long (use 0 for a token that never expires)".into()))?;
    let now = now_secs();
    prune(store, now).await?;
    let secret = hex::encode(rand::random::<[u8; 16]>());
    let id = secret[..ID_LEN].to_string();
    let record = TokenRecord {
        id: id.clone(),
        secret_sha256: hash(&secret),
        description: req.description,
        created: now,
        expires: (ttl > 0).then_some(now + ttl),
        max_uses: req.max_uses,
        used: 0,
        deleted: None,
    };
    let value = serde_json::to_vec(&record).unwrap_or_default();
    let res = store
        .txn(Txn {
            compares: vec![Compare::NotExists { key: key(&id) }],
            success: vec![Op::Put { key: key(&id), value, lease: None }],
            failure: vec![],
        })
        .await?;
    if !res.succeeded {
        return Err(TokenError::Invalid("token id collision, try again".into()));
    }
    let ca_hash = shoal_gossip::pki::ca_hash_hex(ca_cert_pem).map_err(TokenError::Pki)?;
    tracing::info!(id = %id, expires = ?record.expires, max_uses = ?record.max_uses, "join token created");
    Ok((format!("{}.{ca_hash}.{secret}", shoal_gossip::pki::TOKEN_PREFIX), record))
}

/// Every token record, tombstones included, by id.
pub(crate) async fn records(store: &Store) -> Result<Vec<TokenRecord>, TokenError> {
    let (kvs, _) = store.range(PREFIX).await?;
    Ok(kvs.iter().filter_map(|kv| serde_json::from_slice(&kv.value).ok()).collect())
}

/// The tokens `shoal token list` shows: every one not deleted.
pub(crate) async fn list(store: &Store) -> Result<Vec<TokenRecord>, TokenError> {
    store.sync().await?;
    Ok(records(store).await?.into_iter().filter(|r| r.deleted.is_none()).collect())
}

/// Deletes a token (by id, or the whole token): joins with it are refused from now on.
pub(crate) async fn delete(store: &Store, id_or_token: &str) -> Result<TokenRecord, TokenError> {
    let id = match JoinToken::parse(id_or_token) {
        Ok(t) => t.secret[..ID_LEN].to_string(),
        Err(_) => id_or_token.trim().to_string(),
    };
    for _ in 0..5 {
        store.sync().await?;
        let Some(kv) = store.get(&key(&id)).await? else { return Err(TokenError::NotFound(id)) };
        let mut rec: TokenRecord =
            serde_json::from_slice(&kv.value).map_err(|e| TokenError::Invalid(format!("damaged token record: {e}")))?;
        if rec.deleted.is_some() {
            return Err(TokenError::NotFound(id));
        }
        rec.deleted = Some(now_secs());
        let value = serde_json::to_vec(&rec).unwrap_or_default();
        let res = store
            .txn(Txn {
                compares: vec![Compare::ModRevision { key: key(&id), revision: kv.mod_revision }],
                success: vec![Op::Put { key: key(&id), value, lease: None }],
                failure: vec![],
            })
            .await?;
        if res.succeeded {
            tracing::info!(id = %id, "join token deleted");
            return Ok(rec);
        }
    }
    Err(TokenError::Invalid("the token changed while it was being deleted; try again".into()))
}

/// Drops records that stopped working more than a week ago.
async fn prune(store: &Store, now: i64) -> Result<(), TokenError> {
    let ops: Vec<Op> = records(store)
        .await?
        .iter()
        .filter(|r| r.dead_since(now).is_some_and(|t| now - t > KEEP_DEAD_SECS))
        .map(|r| Op::Delete { key: key(&r.id) })
        .collect();
    if !ops.is_empty() {
        store.txn(Txn::ops(ops)).await?;
    }
    Ok(())
}

/// Checks a presented secret (the token's last part) and records one use of it.
pub(crate) async fn admit(store: &Store, secret: &str, now: i64) -> Result<TokenRecord, Refusal> {
    let id = secret.get(..ID_LEN).ok_or(Refusal::Unknown)?;
    let store_err = |e: shoal_store::Error| Refusal::Store(e.to_string());
    for _ in 0..10 {
        store.sync().await.map_err(store_err)?;
        let Some(kv) = store.get(&key(id)).await.map_err(store_err)? else { return Err(Refusal::Unknown) };
        let Ok(mut rec) = serde_json::from_slice::<TokenRecord>(&kv.value) else { return Err(Refusal::Unknown) };
        if !shoal_gossip::pki::constant_time_eq(rec.secret_sha256.as_bytes(), hash(secret).as_bytes()) {
            return Err(Refusal::Unknown);
        }
        if let Some(refusal) = rec.refusal(now) {
            return Err(refusal);
        }
        rec.used = rec.used.saturating_add(1);
        let value = serde_json::to_vec(&rec).unwrap_or_default();
        let res = store
            .txn(Txn {
                compares: vec![Compare::ModRevision { key: key(id), revision: kv.mod_revision }],
                success: vec![Op::Put { key: key(id), value, lease: None }],
                failure: vec![],
            })
            .await
            .map_err(store_err)?;
        if res.succeeded {
            return Ok(rec);
        }
    }
    Err(Refusal::Store("too many joins at once with this token; try again".into()))
}

/// Makes the transport check join secrets against the tokens in the store.
pub(crate) fn serve(transport: &Transport, store: Store) {
    transport.set_token_check(Arc::new(move |secret: String, req: JoinRequest, remote: SocketAddr| {
        let store = store.clone();
        async move {
            match admit(&store, &secret, now_secs()).await {
                Ok(rec) => {
                    tracing::info!(node = %req.name, peer = %remote, token = %rec.id, uses = rec.used, "join token accepted");
                    Ok(())
                }
                Err(refusal) => Err(refusal.to_string()),
            }
        }
        .boxed()
    }));
}

/// The token `shoal token` prints: the one printed last on this node while it has an hour
/// left and uses remaining, otherwise a new one (24 h, any number of uses).
pub(crate) async fn default_token(store: &Store, ca_cert_pem: &str, dir: &Path) -> Result<String, TokenError> {
    let path = dir.join(DEFAULT_TOKEN_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(tok) = JoinToken::parse(&text) {
            store.sync().await?;
            let current = shoal_gossip::pki::ca_hash_hex(ca_cert_pem).map_err(TokenError::Pki)?;
            let id = &tok.secret[..ID_LEN];
            let still_good = match store.get(&key(id)).await? {
                Some(kv) => serde_json::from_slice::<TokenRecord>(&kv.value).is_ok_and(|r| {
                    r.secret_sha256 == hash(&tok.secret)
                        && r.refusal(now_secs() + RENEW_BEFORE_SECS).is_none()
                        && r.max_uses.is_none()
                }),
                None => false,
            };
            if still_good && tok.ca_hash == current {
                return Ok(text.trim().to_string());
            }
        }
    }
    let (token, _) =
        create(store, ca_cert_pem, NewToken { description: "shoal token".into(), ..NewToken::default() }).await?;
    super::identity::write_atomic(&path, token.as_bytes(), 0o600)
        .map_err(|source| TokenError::Write { path: path.clone(), source })?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_of(token: &str) -> String {
        JoinToken::parse(token).unwrap().secret
    }

    #[tokio::test]
    async fn tokens_expire_run_out_and_can_be_deleted() {
        let store = Store::in_memory();
        let ca = shoal_gossip::pki::ClusterSecrets::generate("t").unwrap().ca_cert_pem;
        let now = now_secs();

        let (tok, rec) = create(&store, &ca, NewToken::default()).await.unwrap();
        assert_eq!(rec.expires, Some(rec.created + DEFAULT_TTL_SECS as i64));
        let (never, rec_never) =
            create(&store, &ca, NewToken { ttl_secs: Some(0), ..Default::default() }).await.unwrap();
        assert_eq!(rec_never.expires, None);
        // Only a hash is stored.
        let (kvs, _) = store.range(PREFIX).await.unwrap();
        for kv in &kvs {
            let text = String::from_utf8_lossy(&kv.value);
            assert!(!text.contains(&secret_of(&tok)) && !text.contains(&secret_of(&never)[ID_LEN..]));
        }

        admit(&store, &secret_of(&tok), now).await.unwrap();
        admit(&store, &secret_of(&never), now + 1000 * 86_400).await.unwrap();
        // Past its TTL: refused, and the message says so.
        let err = admit(&store, &secret_of(&tok), now + DEFAULT_TTL_SECS as i64 + 1).await.unwrap_err();
        assert!(matches!(err, Refusal::Expired { .. }));
        assert!(err.to_string().contains("expired"), "{err}");

        // Limited uses.
        let (once, _) = create(&store, &ca, NewToken { max_uses: Some(1), ..Default::default() }).await.unwrap();
        admit(&store, &secret_of(&once), now).await.unwrap();
        let err = admit(&store, &secret_of(&once), now).await.unwrap_err();
        assert!(err.to_string().contains("used up"), "{err}");

        // Deleted, by id or whole token.
        delete(&store, &rec.id).await.unwrap();
        let err = admit(&store, &secret_of(&tok), now).await.unwrap_err();
        assert!(err.to_string().contains("deleted"), "{err}");
        assert!(matches!(delete(&store, &tok).await, Err(TokenError::NotFound(_))));
        assert!(list(&store).await.unwrap().iter().all(|r| r.id != rec.id));

        // A right id with a wrong secret, a token of another kind, garbage.
        let mut forged = secret_of(&never);
        forged.replace_range(ID_LEN.., &"0".repeat(24));
        assert_eq!(admit(&store, &forged, now).await.unwrap_err(), Refusal::Unknown);
        assert_eq!(admit(&store, "", now).await.unwrap_err(), Refusal::Unknown);
        assert_eq!(admit(&store, &"f".repeat(32), now).await.unwrap_err(), Refusal::Unknown);

        assert!(create(&store, &ca, NewToken { max_uses: Some(0), ..Default::default() }).await.is_err());
        assert!(create(&store, &ca, NewToken { ttl_secs: Some(u64::MAX), ..Default::default() }).await.is_err());
    }

    #[tokio::test]
    async fn default_token_is_reused_until_it_stops_working() {
        let store = Store::in_memory();
        let ca = shoal_gossip::pki::ClusterSecrets::generate("t").unwrap().ca_cert_pem;
        let dir = tempfile::tempdir().unwrap();
        let a = default_token(&store, &ca, dir.path()).await.unwrap();
        assert_eq!(default_token(&store, &ca, dir.path()).await.unwrap(), a);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(DEFAULT_TOKEN_FILE)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        delete(&store, &a).await.unwrap();
        let b = default_token(&store, &ca, dir.path()).await.unwrap();
        assert_ne!(a, b);
        admit(&store, &secret_of(&b), now_secs()).await.unwrap();
    }

    #[tokio::test]
    async fn dead_records_are_pruned_after_a_week() {
        let store = Store::in_memory();
        let ca = shoal_gossip::pki::ClusterSecrets::generate("t").unwrap().ca_cert_pem;
        let (_, rec) = create(&store, &ca, NewToken { ttl_secs: Some(1), ..Default::default() }).await.unwrap();
        prune(&store, now_secs() + 2).await.unwrap();
        assert_eq!(records(&store).await.unwrap().len(), 1);
        prune(&store, rec.created + 1 + KEEP_DEAD_SECS + 1).await.unwrap();
        assert!(records(&store).await.unwrap().is_empty());
    }
}
