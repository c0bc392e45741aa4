//! Process-wide counts of the blob bytes this process fetched, by source, for the daemon's
//! metrics (`shoal_image_pull_bytes_total`). Counted once a blob is stored (its digest checked).
use std::sync::atomic::{AtomicU64, Ordering};

static FROM_PEERS: AtomicU64 = AtomicU64::new(0);
static FROM_REGISTRIES: AtomicU64 = AtomicU64::new(0);

pub(crate) fn fetched_from_peer(bytes: u64) {
    FROM_PEERS.fetch_add(bytes, Ordering::Relaxed);
}

pub(crate) fn fetched_from_registry(bytes: u64) {
    FROM_REGISTRIES.fetch_add(bytes, Ordering::Relaxed);
}

/// Blob bytes fetched from peers (another node's store) since the process started.
pub fn bytes_from_peers() -> u64 {
    FROM_PEERS.load(Ordering::Relaxed)
}

/// Blob bytes fetched from registries since the process started (manifests not counted).
pub fn bytes_from_registries() -> u64 {
    FROM_REGISTRIES.load(Ordering::Relaxed)
}
