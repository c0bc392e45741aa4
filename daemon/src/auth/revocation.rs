//! Certificate revocation: every certificate the cluster mints is recorded in the replicated
//! store (`/shoal/certs/<serial>`), a revoked one is listed under `/shoal/revoked/<serial>`,
//! and every node keeps the revoked serials in memory from a watch on that prefix, for the
//! TLS handshakes of the API and of the peer transport (see `shoal_gossip::revocation`).
use serde::{Deserialize, Serialize};
use shoal_gossip::revocation::{canonical_serial, serial_of};
use shoal_gossip::Revocations;
use shoal_store::{EventKind, Store, Txn};
use tokio_util::sync::CancellationToken;

/// Where a record of every minted certificate lives, by serial.
pub const ISSUED_PREFIX: &str = "/shoal/certs/";
/// Where the revoked serials live.
pub const REVOKED_PREFIX: &str = "/shoal/revoked/";

/// A certificate the cluster minted (a kubeconfig's, or a node's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedRecord {
    pub serial: String,
    /// The certificate's CN: the user, or `system:node:NAME`.
    pub subject: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Unix seconds.
    pub not_after: i64,
    /// Unix seconds.
    pub issued_at: i64,
}

/// A revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedRecord {
    pub serial: String,
    /// The certificate's CN when it was recorded at minting; empty when it was not.
    #[serde(default)]
    pub subject: String,
    pub reason: String,
    /// Unix seconds.
    pub revoked_at: i64,
    /// Unix seconds; 0 when unknown.
    #[serde(default)]
    pub not_after: i64,
    /// The Raft id of a removed node (`shoal node remove`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("the certificate to record is unreadable")]
    BadCertificate,
    #[error("{0:?} is not a certificate serial number (hexadecimal, as `openssl x509 -serial` prints it)")]
    BadSerial(String),
    #[error("no certificate minted for {0:?} is on record (see `shoal kubeconfig list`)")]
    NoSuchSubject(String),
    #[error("replicated store")]
    Store(#[source] shoal_store::Error),
    #[error("record {key} is unreadable")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

type Result<T> = std::result::Result<T, RevocationError>;

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// What a PEM certificate says about itself, as recorded.
pub fn describe(cert_pem: &str) -> Result<IssuedRecord> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|_| RevocationError::BadCertificate)?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|_| RevocationError::BadCertificate)?;
    let serial = serial_of(der.as_ref()).ok_or(RevocationError::BadCertificate)?;
    let subject = shoal_gossip::pki::common_name(der.as_ref()).unwrap_or_default();
    Ok(IssuedRecord {
        serial,
        subject,
        groups: shoal_gossip::pki::organizations(der.as_ref()),
        not_after: cert.validity().not_after.timestamp(),
        issued_at: now_secs(),
    })
}

/// Mints a client certificate for a kubeconfig (`shoal kubeconfig [--user NAME] [--group G]
/// [--ttl]`) and records it, so it can be revoked: by default `admin` in `system:masters`.
/// Refuses names in the `system:` namespace, the nodes' group, more than two groups and a
/// lifetime that is not positive, with the message the CLI prints.
pub async fn mint_client_cert(
    store: &Store,
    signer: &shoal_gossip::ClusterSecrets,
    user: Option<String>,
    groups: Vec<String>,
    ttl_secs: Option<i64>,
) -> std::result::Result<(String, shoal_gossip::IssuedCert), String> {
    let (user, groups) = match user {
        None if groups.is_empty() => ("admin".to_string(), vec![super::MASTERS.to_string()]),
        None => ("admin".to_string(), groups),
        Some(u) => (u, groups),
    };
    if user.is_empty() || user.starts_with("system:") {
        return Err(format!("user {user:?}: a name that is not empty and not in the system: namespace is required"));
    }
    if groups.iter().any(|g| g == shoal_gossip::pki::NODES_ORG) {
        return Err(format!(
            "group {:?} is for node certificates, which nodes get by joining",
            shoal_gossip::pki::NODES_ORG
        ));
    }
    if groups.len() > 2 {
        return Err("at most two --group values fit in a certificate".to_string());
    }
    let ttl = ttl_secs.unwrap_or(365 * 24 * 3600);
    if ttl <= 0 {
        return Err("--ttl must be positive".to_string());
    }
    let orgs: Vec<&str> = groups.iter().map(String::as_str).collect();
    let cert = signer.issue_client_cert_valid_for(&user, &orgs, ttl).map_err(|e| e.to_string())?;
    record_issued(store, &cert.cert_pem)
        .await
        .map_err(|e| format!("recording the certificate (so that it can be revoked): {e}"))?;
    Ok((user, cert))
}

/// Records a minted certificate, so `shoal kubeconfig revoke --user` finds it.
pub async fn record_issued(store: &Store, cert_pem: &str) -> Result<IssuedRecord> {
    let rec = describe(cert_pem)?;
    let value =
        serde_json::to_vec(&rec).map_err(|source| RevocationError::Decode { key: rec.serial.clone(), source })?;
    store.txn(Txn::put(format!("{ISSUED_PREFIX}{}", rec.serial), value)).await.map_err(RevocationError::Store)?;
    Ok(rec)
}

async fn list<T: serde::de::DeserializeOwned>(store: &Store, prefix: &str) -> Result<Vec<T>> {
    let (kvs, _) = store.range(prefix).await.map_err(RevocationError::Store)?;
    kvs.iter()
        .map(|kv| {
            serde_json::from_slice(&kv.value).map_err(|source| RevocationError::Decode { key: kv.key.clone(), source })
        })
        .collect()
}

/// Every certificate on record (minted since records are kept).
pub async fn issued(store: &Store) -> Result<Vec<IssuedRecord>> {
    list(store, ISSUED_PREFIX).await
}

/// Every revoked certificate.
pub async fn revoked(store: &Store) -> Result<Vec<RevokedRecord>> {
    list(store, REVOKED_PREFIX).await
}

async fn put_revoked(store: &Store, rec: &RevokedRecord) -> Result<()> {
    let value =
        serde_json::to_vec(rec).map_err(|source| RevocationError::Decode { key: rec.serial.clone(), source })?;
    store.txn(Txn::put(format!("{REVOKED_PREFIX}{}", rec.serial), value)).await.map_err(RevocationError::Store)?;
    Ok(())
}

/// Revokes every certificate on record for `subject` (a user name, or `system:node:NAME`);
/// returns what it revoked now (those revoked before are left as they were).
pub async fn revoke_subject(
    store: &Store,
    subject: &str,
    reason: &str,
    node_id: Option<u64>,
) -> Result<Vec<RevokedRecord>> {
    let certs: Vec<IssuedRecord> = issued(store).await?.into_iter().filter(|c| c.subject == subject).collect();
    if certs.is_empty() {
        return Err(RevocationError::NoSuchSubject(subject.to_string()));
    }
    let already: std::collections::HashSet<String> = revoked(store).await?.into_iter().map(|r| r.serial).collect();
    let mut out = Vec::new();
    for c in certs.into_iter().filter(|c| !already.contains(&c.serial)) {
        let rec = RevokedRecord {
            serial: c.serial,
            subject: c.subject,
            reason: reason.to_string(),
            revoked_at: now_secs(),
            not_after: c.not_after,
            node_id,
        };
        put_revoked(store, &rec).await?;
        tracing::info!(serial = %rec.serial, subject = %rec.subject, reason, "certificate revoked");
        out.push(rec);
    }
    Ok(out)
}

/// Revokes one serial (any certificate of the cluster CA, on record or not).
pub async fn revoke_serial(store: &Store, serial: &str, reason: &str) -> Result<RevokedRecord> {
    let serial = canonical_serial(serial).ok_or_else(|| RevocationError::BadSerial(serial.to_string()))?;
    if let Some(r) = revoked(store).await?.into_iter().find(|r| r.serial == serial) {
        return Ok(r);
    }
    let known = issued(store).await?.into_iter().find(|c| c.serial == serial);
    let rec = RevokedRecord {
        subject: known.as_ref().map(|c| c.subject.clone()).unwrap_or_default(),
        not_after: known.map_or(0, |c| c.not_after),
        serial,
        reason: reason.to_string(),
        revoked_at: now_secs(),
        node_id: None,
    };
    put_revoked(store, &rec).await?;
    tracing::info!(serial = %rec.serial, subject = %rec.subject, reason, "certificate revoked");
    Ok(rec)
}

/// How long after a certificate's expiry its records are kept: a node whose clock runs behind
/// (a board without a battery-backed clock, before NTP steps it) would still take an expired
/// certificate, so its revocation outlives the expiry by this much.
pub const PRUNE_GRACE_SECS: i64 = 7 * 24 * 3600;

/// What [`prune_expired`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub issued: usize,
    pub revoked: usize,
}

/// Deletes the records of certificates that expired more than [`PRUNE_GRACE_SECS`] before
/// `now` (Unix seconds): their `/shoal/certs/` records and their `/shoal/revoked/` entries, so
/// the revoked set every node holds in memory stays as small as the certificates still alive.
/// Kept: entries of unknown expiry (a serial revoked without a record) and those of removed
/// nodes (their Raft id must never count as healthy again). Each delete is conditional on the
/// record being unchanged since it was read; an unreadable record is left alone.
pub async fn prune_expired(store: &Store, now: i64) -> Result<Pruned> {
    use shoal_store::{Compare, Op};
    let cutoff = now.saturating_sub(PRUNE_GRACE_SECS);
    // (key, mod_revision, whether it is a revocation entry)
    let mut doomed: Vec<(String, u64, bool)> = Vec::new();
    let mut pruned = Pruned::default();
    let (kvs, _) = store.range(ISSUED_PREFIX).await.map_err(RevocationError::Store)?;
    for kv in &kvs {
        if let Ok(r) = serde_json::from_slice::<IssuedRecord>(&kv.value) {
            if r.not_after < cutoff {
                doomed.push((kv.key.clone(), kv.mod_revision, false));
            }
        }
    }
    let (kvs, _) = store.range(REVOKED_PREFIX).await.map_err(RevocationError::Store)?;
    for kv in &kvs {
        if let Ok(r) = serde_json::from_slice::<RevokedRecord>(&kv.value) {
            if r.not_after != 0 && r.not_after < cutoff && r.node_id.is_none() {
                doomed.push((kv.key.clone(), kv.mod_revision, true));
            }
        }
    }
    for chunk in doomed.chunks(128) {
        let txn = shoal_store::Txn {
            compares: chunk
                .iter()
                .map(|(key, revision, _)| Compare::ModRevision { key: key.clone(), revision: *revision })
                .collect(),
            success: chunk.iter().map(|(key, _, _)| Op::Delete { key: key.clone() }).collect(),
            failure: Vec::new(),
        };
        let r = store.txn(txn).await.map_err(RevocationError::Store)?;
        if r.succeeded {
            let revoked = chunk.iter().filter(|d| d.2).count();
            pruned.revoked += revoked;
            pruned.issued += chunk.len() - revoked;
        } else {
            // Something changed under this chunk; the next round looks again.
            tracing::debug!("a certificate record changed while pruning; left for the next round");
        }
    }
    if pruned != Pruned::default() {
        tracing::info!(issued = pruned.issued, revoked = pruned.revoked, "expired certificate records pruned");
    }
    Ok(pruned)
}

/// The Raft ids of the nodes removed with `shoal node remove` (never counted healthy again).
pub async fn removed_nodes(store: &Store) -> std::collections::BTreeSet<u64> {
    match revoked(store).await {
        Ok(list) => list.into_iter().filter_map(|r| r.node_id).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "reading the revocation list");
            Default::default()
        }
    }
}

/// Keeps `set` equal to the revoked serials of the local replica until `stop`: a full read,
/// then a watch from that revision (a lost watch reads again). A revocation reaches the set
/// as soon as this node applies it.
pub async fn keep_current(store: Store, set: Revocations, stop: CancellationToken) {
    loop {
        let (kvs, rev) = match store.range(REVOKED_PREFIX).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "reading the revocation list");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => continue,
                }
            }
        };
        let serial_of_key = |k: &str| k.strip_prefix(REVOKED_PREFIX).map(str::to_string);
        set.replace(kvs.iter().filter_map(|kv| serial_of_key(&kv.key)));
        let mut watch = match store.watch(REVOKED_PREFIX, Some(rev)).await {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(error = %e, "watching the revocation list");
                continue;
            }
        };
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => return,
                ev = watch.recv() => ev,
            };
            match ev {
                Some(Ok(ev)) if ev.kind == EventKind::Put => {
                    if let Some(s) = serial_of_key(&ev.kv.key) {
                        set.insert(&s);
                    }
                }
                // A deletion (an expired entry cleaned up) or a lost watch: read it all again.
                Some(Ok(_)) | Some(Err(_)) => break,
                None => {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => break,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mint(secrets: &shoal_gossip::ClusterSecrets, user: &str) -> String {
        secrets.issue_client_cert_valid_for(user, &["dev"], 3600).expect("cert").cert_pem
    }

    #[tokio::test]
    async fn revoking_a_user_revokes_every_certificate_minted_for_it() {
        let store = Store::in_memory();
        let secrets = shoal_gossip::ClusterSecrets::generate("t").expect("secrets");
        let set = Revocations::default();
        let stop = CancellationToken::new();
        let task = tokio::spawn(keep_current(store.clone(), set.clone(), stop.clone()));
        let a1 = record_issued(&store, &mint(&secrets, "alice")).await.expect("record");
        let a2 = record_issued(&store, &mint(&secrets, "alice")).await.expect("record");
        let bob = record_issued(&store, &mint(&secrets, "bob")).await.expect("record");
        assert_eq!(a1.subject, "alice");
        assert_eq!(a1.groups, ["dev"]);
        let done = revoke_subject(&store, "alice", "left", None).await.expect("revoke");
        assert_eq!(done.len(), 2);
        // Again: nothing new.
        assert!(revoke_subject(&store, "alice", "again", None).await.expect("revoke").is_empty());
        assert!(matches!(revoke_subject(&store, "carol", "x", None).await, Err(RevocationError::NoSuchSubject(_))));
        for _ in 0..100 {
            if set.len() == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(set.is_revoked(&a1.serial) && set.is_revoked(&a2.serial) && !set.is_revoked(&bob.serial));
        // By serial, in openssl's upper-case form with colons.
        let colons: Vec<String> = format!("{:0>32}", bob.serial.to_uppercase())
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        let r = revoke_serial(&store, &colons.join(":"), "lost laptop").await.expect("revoke");
        assert_eq!(r.subject, "bob");
        assert!(matches!(revoke_serial(&store, "alice", "x").await, Err(RevocationError::BadSerial(_))));
        for _ in 0..100 {
            if set.len() == 3 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(set.is_revoked(&bob.serial));
        assert!(removed_nodes(&store).await.is_empty());
        stop.cancel();
        task.await.expect("task");
    }

    async fn put<T: Serialize>(store: &Store, key: String, v: &T) {
        store.txn(Txn::put(key, serde_json::to_vec(v).expect("json"))).await.expect("put");
    }

    fn issued_rec(serial: &str, not_after: i64) -> IssuedRecord {
        IssuedRecord { serial: serial.into(), subject: "u".into(), groups: vec![], not_after, issued_at: 0 }
    }

    fn revoked_rec(serial: &str, not_after: i64, node_id: Option<u64>) -> RevokedRecord {
        RevokedRecord {
            serial: serial.into(),
            subject: "u".into(),
            reason: "r".into(),
            revoked_at: 0,
            not_after,
            node_id,
        }
    }

    #[tokio::test]
    async fn records_of_long_expired_certificates_are_pruned_and_leave_the_revoked_set() {
        let store = Store::in_memory();
        let set = Revocations::default();
        let stop = CancellationToken::new();
        let task = tokio::spawn(keep_current(store.clone(), set.clone(), stop.clone()));
        let now = 1_900_000_000;
        let long_ago = now - PRUNE_GRACE_SECS - 1;
        let lately = now - 60;
        let alive = now + 3600;
        for (serial, not_after) in [("a1", long_ago), ("a2", lately), ("a3", alive)] {
            put(&store, format!("{ISSUED_PREFIX}{serial}"), &issued_rec(serial, not_after)).await;
        }
        let revoked_list = [
            ("a1", long_ago, None),
            ("a2", lately, None),
            ("a3", alive, None),
            // Revoked by serial with no record: expiry unknown, kept.
            ("b1", 0, None),
            // A removed node: kept, its Raft id stays out.
            ("d1", long_ago, Some(7)),
        ];
        for (serial, not_after, node) in revoked_list {
            put(&store, format!("{REVOKED_PREFIX}{serial}"), &revoked_rec(serial, not_after, node)).await;
        }
        // Garbage under the prefix is left alone, not a reason to fail.
        store.txn(Txn::put(format!("{REVOKED_PREFIX}ee"), b"{".to_vec())).await.expect("put");
        for _ in 0..200 {
            if set.len() == 6 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(set.len(), 6);

        let pruned = prune_expired(&store, now).await.expect("prune");
        assert_eq!(pruned, Pruned { issued: 1, revoked: 1 });
        let issued: Vec<String> = issued(&store).await.expect("issued").into_iter().map(|r| r.serial).collect();
        assert_eq!(issued, ["a2", "a3"]);
        let (kvs, _) = store.range(REVOKED_PREFIX).await.expect("range");
        let keys: Vec<&str> = kvs.iter().filter_map(|kv| kv.key.strip_prefix(REVOKED_PREFIX)).collect();
        assert_eq!(keys, ["a2", "a3", "b1", "d1", "ee"]);
        for _ in 0..200 {
            if set.len() == 5 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(!set.is_revoked("a1"), "the pruned serial left the in-memory set");
        assert!(set.is_revoked("a2") && set.is_revoked("b1") && set.is_revoked("d1"));
        // Nothing more to do: a second round deletes nothing.
        assert_eq!(prune_expired(&store, now).await.expect("prune"), Pruned::default());
        // A thousand expired revocations: the set comes back to what is still alive.
        for i in 0..1000 {
            let serial = format!("c{i:04}");
            put(&store, format!("{REVOKED_PREFIX}{serial}"), &revoked_rec(&serial, long_ago, None)).await;
        }
        assert_eq!(prune_expired(&store, now).await.expect("prune").revoked, 1000);
        for _ in 0..200 {
            if set.len() == 5 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(set.len(), 5);
        stop.cancel();
        task.await.expect("task");
    }
}
