//! The serial numbers of revoked certificates, as every TLS handshake of a node sees them.
//!
//! The set lives in memory and is replaced whole by whoever keeps it current (the daemon,
//! from a watch on the replicated store), so a handshake's check is one hash lookup. The
//! client-certificate verifiers of the peer transport and of the Kubernetes API refuse a
//! revoked certificate; subscribers hear of every change, so they can close connections
//! that were opened before the revocation.
use std::collections::HashSet;
use std::sync::{Arc, RwLock};

/// Canonical form of a certificate serial number: lower-case hex without leading zeros or
/// separators (`0A:1b:ff` and `a1bff` are the same serial); `None` for anything not hex.
pub fn canonical_serial(s: &str) -> Option<String> {
    let hex: String = s.trim().chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
    if hex.is_empty() || hex.len() > 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let trimmed = hex.trim_start_matches('0');
    Some(if trimmed.is_empty() { "0".to_string() } else { trimmed.to_string() })
}

/// The canonical serial number of a DER certificate; `None` for garbage.
pub fn serial_of(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    canonical_serial(&hex::encode(cert.raw_serial()))
}

struct Inner {
    serials: RwLock<HashSet<String>>,
    changed: tokio::sync::watch::Sender<u64>,
}

/// The revoked serials (canonical form). Cheap to clone; clones share the set.
#[derive(Clone)]
pub struct Revocations {
    inner: Arc<Inner>,
}

impl Default for Revocations {
    fn default() -> Self {
        let (changed, _) = tokio::sync::watch::channel(0);
        Revocations { inner: Arc::new(Inner { serials: RwLock::new(HashSet::new()), changed }) }
    }
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations").field("len", &self.len()).finish()
    }
}

impl Revocations {
    /// Whether this serial (any form [`canonical_serial`] reads) is revoked.
    pub fn is_revoked(&self, serial: &str) -> bool {
        let Some(serial) = canonical_serial(serial) else { return false };
        self.read().contains(&serial)
    }

    /// Whether this DER certificate is revoked (false for garbage, which the signature
    /// checks refuse anyway).
    pub fn is_revoked_cert(&self, cert_der: &[u8]) -> bool {
        if self.read().is_empty() {
            return false;
        }
        serial_of(cert_der).is_some_and(|s| self.read().contains(&s))
    }

    /// Replaces the whole set; subscribers are told when it changed.
    pub fn replace(&self, serials: impl IntoIterator<Item = String>) {
        let new: HashSet<String> = serials.into_iter().filter_map(|s| canonical_serial(&s)).collect();
        let mut set = self.inner.serials.write().unwrap_or_else(|p| p.into_inner());
        if *set == new {
            return;
        }
        *set = new;
        drop(set);
        self.inner.changed.send_modify(|n| *n += 1);
    }

    /// Adds one serial; subscribers are told when it is new.
    pub fn insert(&self, serial: &str) {
        let Some(serial) = canonical_serial(serial) else { return };
        let added = self.inner.serials.write().unwrap_or_else(|p| p.into_inner()).insert(serial);
        if added {
            self.inner.changed.send_modify(|n| *n += 1);
        }
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Woken after every change of the set.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashSet<String>> {
        self.inner.serials.read().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_compared_in_one_form() {
        assert_eq!(canonical_serial("0A:1b:FF").as_deref(), Some("a1bff"));
        assert_eq!(canonical_serial(" 000a1bff ").as_deref(), Some("a1bff"));
        assert_eq!(canonical_serial("00").as_deref(), Some("0"));
        assert_eq!(canonical_serial(""), None);
        assert_eq!(canonical_serial("alice"), None);
        assert_eq!(canonical_serial(&"f".repeat(65)), None);
    }

    #[tokio::test]
    async fn changes_reach_subscribers_and_lookups() {
        let r = Revocations::default();
        let mut rx = r.subscribe();
        assert!(!r.is_revoked("a1"));
        r.insert("A1");
        rx.changed().await.unwrap();
        assert!(r.is_revoked("00:a1"));
        r.replace(["b2".to_string()]);
        rx.changed().await.unwrap();
        assert!(!r.is_revoked("a1") && r.is_revoked("b2"));
        // The same set again is no change.
        r.replace(["B2".to_string()]);
        assert!(!rx.has_changed().unwrap());
        assert!(!r.is_revoked_cert(b"garbage"));
    }
}
