//! Blobs from somewhere other than the registry, tried first: in a fleet, the node's peers.
//!
//! A pull asks each [`BlobSource`] in turn for every blob it lacks; the bytes a source sends are
//! hashed as they are written and dropped unless they match the digest, so a source is never
//! trusted. A source that lacks the blob, fails or sends wrong bytes costs one attempt, then the
//! next source or the registry serves the blob.

use std::fmt;
use std::io;
use std::pin::Pin;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::Stream;

use crate::error::Result;
use crate::store::{ImageStore, Inner};

/// The bytes of one blob.
pub type BlobStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// A place that may hold blobs by digest, asked before the registry.
pub trait BlobSource: Send + Sync + fmt::Debug {
    /// The blob's bytes, or `None` when this source does not have it. `size` is the size the
    /// manifest gives (a source may refuse a mismatch early; the digest is checked regardless).
    fn open<'a>(&'a self, digest: &'a str, size: u64) -> BoxFuture<'a, Result<Option<BlobStream>>>;
}

/// Serves the blobs of a local store: what a node answers its peers with, and a peer in tests.
#[derive(Clone, Debug)]
pub struct StoreBlobSource {
    store: ImageStore,
}

impl StoreBlobSource {
    pub fn new(store: ImageStore) -> StoreBlobSource {
        StoreBlobSource { store }
    }
}

impl BlobSource for StoreBlobSource {
    fn open<'a>(&'a self, digest: &'a str, _size: u64) -> BoxFuture<'a, Result<Option<BlobStream>>> {
        Box::pin(async move { self.store.read_blob(digest).await })
    }
}

/// Fetches `digest` from the first source that has it with the right bytes; `false` when none
/// does.
pub(crate) async fn fetch_from_sources(inner: &Inner, digest: &str, size: u64) -> Result<bool> {
    let sources = inner.blob_sources();
    for source in sources {
        let stream = match source.open(digest, size).await {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(%digest, source = ?source, error = %e, "blob source failed");
                continue;
            }
        };
        match inner.blobs.fetch(digest, stream).await {
            Ok(n) => {
                crate::stats::fetched_from_peer(n);
                tracing::debug!(%digest, bytes = n, source = ?source, "fetched blob from a peer");
                return Ok(true);
            }
            Err(e) => tracing::warn!(%digest, source = ?source, error = %e, "blob from a peer refused"),
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::blobs::sha256_digest;
    use crate::Platform;

    /// Serves fixed bytes for every digest and counts the requests.
    #[derive(Debug)]
    struct Fixed(Option<Vec<u8>>, AtomicUsize);

    impl BlobSource for Fixed {
        fn open<'a>(&'a self, _digest: &'a str, _size: u64) -> BoxFuture<'a, Result<Option<BlobStream>>> {
            self.1.fetch_add(1, Ordering::SeqCst);
            let bytes = self.0.clone();
            Box::pin(
                async move { Ok(bytes.map(|b| Box::pin(futures::stream::iter([Ok(Bytes::from(b))])) as BlobStream)) },
            )
        }
    }

    fn store(dir: &std::path::Path) -> ImageStore {
        ImageStore::open(dir, Platform::new("linux", "amd64", None)).unwrap()
    }

    #[tokio::test]
    async fn first_source_with_the_right_bytes_wins_and_wrong_bytes_are_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (store(&tmp.path().join("a")), store(&tmp.path().join("b")));
        let blob = b"layer bytes".to_vec();
        let digest = sha256_digest(&blob);
        let lacking = Arc::new(Fixed(None, AtomicUsize::new(0)));
        let liar = Arc::new(Fixed(Some(b"something else".to_vec()), AtomicUsize::new(0)));
        b.set_blob_sources(vec![lacking.clone(), liar.clone(), Arc::new(StoreBlobSource::new(a.clone()))]);

        // Nobody has it yet.
        assert!(!fetch_from_sources(&b.inner, &digest, blob.len() as u64).await.unwrap());
        assert!(!b.inner.blobs.exists(&digest));

        a.inner.blobs.put(&blob, Some(&digest)).unwrap();
        assert!(fetch_from_sources(&b.inner, &digest, blob.len() as u64).await.unwrap());
        assert_eq!(std::fs::read(b.inner.blobs.path(&digest).unwrap()).unwrap(), blob);
        assert_eq!(lacking.1.load(Ordering::SeqCst), 2);
        assert_eq!(liar.1.load(Ordering::SeqCst), 2);
        // The wrong bytes left nothing behind.
        assert_eq!(b.inner.blobs.list().unwrap(), vec![digest.clone()]);

        // A digest the store does not hold, or a malformed one, is simply not served.
        assert!(a.read_blob(&sha256_digest(b"other")).await.unwrap().is_none());
        assert!(a.read_blob("sha256:../../etc/passwd").await.is_err());
    }
}
