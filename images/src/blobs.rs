//! Content-addressed blobs under `blobs/sha256/<hex>`, every digest verified while writing.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Manifests, indexes and configs larger than this are refused.
pub(crate) const MAX_METADATA_BLOB: u64 = 16 << 20;

/// Checks `sha256:<64 lower-case hex>` and returns the hex part.
pub(crate) fn parse_digest(digest: &str) -> Result<&str> {
    let hex = digest.strip_prefix("sha256:").ok_or_else(|| Error::ParseDigest(digest.to_string()))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(Error::ParseDigest(digest.to_string()));
    }
    Ok(hex)
}

pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[derive(Debug, Clone)]
pub(crate) struct BlobStore {
    dir: PathBuf,
    tmp: PathBuf,
}

impl BlobStore {
    pub(crate) fn open(images_dir: &Path) -> Result<Self> {
        let dir = images_dir.join("blobs").join("sha256");
        let tmp = images_dir.join("tmp");
        for d in [&dir, &tmp] {
            fs::create_dir_all(d).map_err(|source| Error::CreateDir { path: d.clone(), source })?;
        }
        Ok(Self { dir, tmp })
    }

    pub(crate) fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    pub(crate) fn path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.dir.join(parse_digest(digest)?))
    }

    pub(crate) fn exists(&self, digest: &str) -> bool {
        self.path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    pub(crate) fn size(&self, digest: &str) -> Option<u64> {
        self.path(digest).ok().and_then(|p| fs::metadata(p).ok()).map(|m| m.len())
    }

    /// Starts writing a blob; the digest is checked against `expected` (when given) on commit.
    pub(crate) fn writer(&self, expected: Option<&str>) -> Result<BlobWriter> {
        if let Some(d) = expected {
            parse_digest(d)?;
        }
        let label = expected.unwrap_or("new blob").to_string();
        let tmp_path = self.tmp.join(format!("blob-{}", rand::random::<u64>()));
        let file = File::create(&tmp_path).map_err(|source| Error::WriteBlob { digest: label, source })?;
        Ok(BlobWriter {
            file,
            hasher: Sha256::new(),
            tmp_path,
            dir: self.dir.clone(),
            expected: expected.map(str::to_string),
            done: false,
        })
    }

    /// Stores `bytes`, verifying them against `expected` when given; returns the digest.
    pub(crate) fn put(&self, bytes: &[u8], expected: Option<&str>) -> Result<String> {
        let digest = sha256_digest(bytes);
        if let Some(e) = expected {
            if e != digest {
                return Err(Error::VerifyDigest { expected: e.to_string(), actual: digest });
            }
        }
        if self.exists(&digest) {
            return Ok(digest);
        }
        let mut w = self.writer(Some(&digest))?;
        w.write_all(bytes).map_err(|source| Error::WriteBlob { digest: digest.clone(), source })?;
        w.commit()
    }

    /// Reads a small blob (manifest, index, config) and verifies it again.
    pub(crate) fn read_metadata(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.path(digest)?;
        let err = |source| Error::ReadBlob { digest: digest.to_string(), source };
        let file = File::open(&path).map_err(err)?;
        let mut buf = Vec::new();
        file.take(MAX_METADATA_BLOB + 1).read_to_end(&mut buf).map_err(err)?;
        if buf.len() as u64 > MAX_METADATA_BLOB {
            return Err(Error::LayerLimit("metadata blob larger than 16 MiB"));
        }
        let actual = sha256_digest(&buf);
        if actual != digest {
            return Err(Error::VerifyDigest { expected: digest.to_string(), actual });
        }
        Ok(buf)
    }

    pub(crate) fn open_blob(&self, digest: &str) -> Result<File> {
        File::open(self.path(digest)?).map_err(|source| Error::ReadBlob { digest: digest.to_string(), source })
    }

    pub(crate) fn list(&self) -> Result<Vec<String>> {
        let rd = fs::read_dir(&self.dir).map_err(|source| Error::ListDir { path: self.dir.clone(), source })?;
        let mut out = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let d = format!("sha256:{name}");
            if parse_digest(&d).is_ok() {
                out.push(d);
            }
        }
        Ok(out)
    }

    pub(crate) fn remove(&self, digest: &str) -> Result<()> {
        let p = self.path(digest)?;
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Remove { path: p, source }),
        }
    }
}

impl BlobStore {
    /// Streams a blob from `stream` into the store, verifying `expected`; returns bytes written.
    pub(crate) async fn fetch<S>(&self, expected: &str, mut stream: S) -> Result<u64>
    where
        S: futures::Stream<Item = std::result::Result<bytes::Bytes, io::Error>> + Unpin,
    {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        parse_digest(expected)?;
        let err = |source| Error::WriteBlob { digest: expected.to_string(), source };
        let tmp_path = self.tmp.join(format!("blob-{}", rand::random::<u64>()));
        let guard = TmpGuard(tmp_path.clone());
        let mut file = tokio::fs::File::create(&tmp_path).await.map_err(err)?;
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(err)?;
            hasher.update(&chunk);
            written += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(err)?;
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != expected {
            return Err(Error::VerifyDigest { expected: expected.to_string(), actual });
        }
        file.sync_all().await.map_err(err)?;
        drop(file);
        tokio::fs::rename(&tmp_path, self.path(expected)?).await.map_err(err)?;
        std::mem::forget(guard);
        Ok(written)
    }
}

struct TmpGuard(PathBuf);

impl Drop for TmpGuard {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// A blob being written: hashed on the way, renamed into place only when the digest matches.
pub(crate) struct BlobWriter {
    file: File,
    hasher: Sha256,
    tmp_path: PathBuf,
    dir: PathBuf,
    expected: Option<String>,
    done: bool,
}

impl BlobWriter {
    /// Verifies the digest, syncs and renames the blob into place; returns its digest.
    pub(crate) fn commit(mut self) -> Result<String> {
        let actual = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
        if let Some(e) = &self.expected {
            if *e != actual {
                return Err(Error::VerifyDigest { expected: e.clone(), actual });
            }
        }
        let err = |source| Error::WriteBlob { digest: actual.clone(), source };
        self.file.sync_all().map_err(err)?;
        let hex = parse_digest(&actual)?.to_string();
        fs::rename(&self.tmp_path, self.dir.join(hex)).map_err(err)?;
        self.done = true;
        Ok(actual)
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_verifies_and_dedups() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = store.put(b"hello", None).unwrap();
        assert_eq!(d, sha256_digest(b"hello"));
        assert_eq!(store.read_metadata(&d).unwrap(), b"hello");
        assert_eq!(store.put(b"hello", Some(&d)).unwrap(), d);
        let wrong = sha256_digest(b"other");
        assert!(matches!(store.put(b"hello", Some(&wrong)), Err(Error::VerifyDigest { .. })));
        assert!(!store.exists(&wrong));
        assert_eq!(store.list().unwrap(), vec![d.clone()]);
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn streamed_blob_with_wrong_digest_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let wrong = sha256_digest(b"x");
        let mut w = store.writer(Some(&wrong)).unwrap();
        w.write_all(b"y").unwrap();
        assert!(w.commit().is_err());
        assert!(!store.exists(&wrong));
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn digests_are_checked() {
        assert!(parse_digest("sha256:abc").is_err());
        assert!(parse_digest(&format!("sha512:{}", "a".repeat(64))).is_err());
        assert!(parse_digest(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(parse_digest(&format!("sha256:{}", "../".repeat(21) + "a")).is_err());
    }
}
