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
}
