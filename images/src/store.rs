//! The image store: blobs, image records, unpacked layers, overlay snapshots, GC.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use nix::fcntl::{Flock, FlockArg};

use crate::blobs::{parse_digest, BlobStore};
use crate::error::{Error, Result};
use crate::model::{ImageInfo, ImageRecord, IndexFile, LayerRecord, RawImageConfig, RawManifest};
use crate::os::{ImageOs, LinuxImageOs};
use crate::peers::{BlobSource, BlobStream};
use crate::platform::Platform;
use crate::reference::{ImageName, ImageRef};
use crate::registry::{Auth, Registries};
use crate::unpack::{unpack_layer, UnpackLimits};

/// Overlay mount data must fit in one page.
const MAX_OVERLAY_OPTIONS: usize = 4095;

/// A container's root filesystem: read-only image layers under a private writable layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub target: PathBuf,
    /// Topmost layer first, as overlayfs wants them.
    pub lowerdirs: Vec<PathBuf>,
    pub upperdir: PathBuf,
    pub workdir: PathBuf,
}

impl Mount {
    /// The overlayfs option string.
    pub fn options(&self) -> String {
        let lower: Vec<String> = self.lowerdirs.iter().map(|p| p.display().to_string()).collect();
        format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), self.upperdir.display(), self.workdir.display())
    }
}

/// What a garbage collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub blobs_removed: usize,
    pub layers_removed: usize,
    pub bytes_freed: u64,
}

/// The node's images, under `<data_dir>/images/`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ImageStore {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) dir: PathBuf,
    pub(crate) blobs: BlobStore,
    pub(crate) os: Arc<dyn ImageOs>,
    pub(crate) platform: Platform,
    pub(crate) limits: UnpackLimits,
    /// Asked for blobs before the registry (the node's peers).
    pub(crate) sources: RwLock<Vec<Arc<dyn BlobSource>>>,
}

impl Inner {
    pub(crate) fn blob_sources(&self) -> Vec<Arc<dyn BlobSource>> {
        self.sources.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn create_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|source| Error::CreateDir { path: path.to_path_buf(), source })
}

fn join_err(e: tokio::task::JoinError) -> Error {
    Error::Join(e)
}

impl ImageStore {
    /// Opens (creating when needed) the store under `<data_dir>/images/`.
    pub fn open(data_dir: &Path, platform: Platform) -> Result<Self> {
        Self::open_with(data_dir, platform, Arc::new(LinuxImageOs), UnpackLimits::default())
    }

    /// Like [`ImageStore::open`] with an explicit OS layer and unpack limits.
    pub fn open_with(data_dir: &Path, platform: Platform, os: Arc<dyn ImageOs>, limits: UnpackLimits) -> Result<Self> {
        let dir = data_dir.join("images");
        for sub in ["layers", "containers", "import"] {
            create_dir(&dir.join(sub))?;
        }
        let blobs = BlobStore::open(&dir)?;
        // Root only, whatever the data dir's mode: an image's files (setuid binaries, device
        // nodes, credentials baked into a layer) give a host user nothing. Inside a layer the
        // tar's own modes stay (the container sees them through overlayfs, which reaches the
        // layer with the mounter's, root's, rights).
        for d in ["", "layers", "containers", "import", "blobs", "tmp"] {
            let path = dir.join(d);
            fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(|source| Error::CreateDir { path, source })?;
        }
        // Leftovers of an interrupted write.
        if let Ok(rd) = fs::read_dir(blobs.tmp_dir()) {
            for e in rd.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(Self { inner: Arc::new(Inner { dir, blobs, os, platform, limits, sources: RwLock::new(Vec::new()) }) })
    }

    /// Sets where pulls look for blobs before the registry, in order (the node's peers). Every
    /// blob is verified against its digest whichever source sends it.
    pub fn set_blob_sources(&self, sources: Vec<Arc<dyn BlobSource>>) {
        *self.inner.sources.write().unwrap_or_else(|p| p.into_inner()) = sources;
    }

    /// The bytes of a blob this store holds, for a peer that asks; `None` when it is not here.
    /// A malformed digest is an error.
    pub async fn read_blob(&self, digest: &str) -> Result<Option<BlobStream>> {
        parse_digest(digest)?;
        if !self.inner.blobs.exists(digest) {
            return Ok(None);
        }
        let path = self.inner.blobs.path(digest)?;
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::ReadBlob { digest: digest.to_string(), source }),
        };
        let stream = futures::stream::unfold(Some(file), |file| async move {
            use tokio::io::AsyncReadExt;
            let mut file = file?;
            let mut buf = vec![0u8; 64 * 1024];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(bytes::Bytes::from(buf)), Some(file)))
                }
                Err(e) => Some((Err(e), None)),
            }
        });
        Ok(Some(Box::pin(stream)))
    }

    /// The node platform images are resolved for.
    pub fn platform(&self) -> &Platform {
        &self.inner.platform
    }

    /// `<data_dir>/images`.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Where tarballs for [`ImageStore::import_dir`] go.
    pub fn import_dir_path(&self) -> PathBuf {
        self.inner.dir.join("import")
    }

    /// The unpacked directory of the layer with this diff id.
    pub fn layer_dir(&self, diff_id: &str) -> Result<PathBuf> {
        self.inner.layer_dir(diff_id)
    }

    /// All images.
    pub fn list(&self) -> Result<Vec<ImageInfo>> {
        Ok(self.inner.load_index()?.images.iter().map(ImageRecord::info).collect())
    }

    /// Looks an image up by name (short or full), `name@digest`, digest, or a unique digest
    /// prefix of at least 12 hex digits.
    pub fn get(&self, reference: &str) -> Result<Option<ImageInfo>> {
        let index = self.inner.load_index()?;
        Ok(find(&index, reference).map(|(i, _)| index.images[i].info()))
    }

    /// Pulls an image from its registry (or a mirror) and unpacks its layers.
    pub async fn pull(&self, reference: &str, registries: &Registries, auth: Auth) -> Result<ImageInfo> {
        let name = ImageName::parse(reference)?;
        let inner = self.inner.clone();
        let guard = tokio::task::spawn_blocking(move || inner.ingest_lock(false)).await.map_err(join_err)??;
        let fetched = crate::registry::fetch(&self.inner, &name, registries, &auth).await?;
        let inner = self.inner.clone();
        let stored_name = name.to_string();
        let info = tokio::task::spawn_blocking(move || {
            inner.register(&fetched.manifest_digest, vec![stored_name], fetched.offered)
        })
        .await
        .map_err(join_err)??;
        drop(guard);
        Ok(info)
    }

    /// Imports a `docker save` or OCI image-layout tarball (plain, gzip or zstd).
    pub async fn import(&self, path: &Path) -> Result<Vec<ImageRef>> {
        let inner = self.inner.clone();
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let _guard = inner.ingest_lock(false)?;
            inner.import_file(&path)
        })
        .await
        .map_err(join_err)?
    }

    /// Imports every tarball in `<data_dir>/images/import/`; a broken one is logged and skipped.
    pub async fn import_dir(&self) -> Result<Vec<ImageRef>> {
        let dir = self.import_dir_path();
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(|source| Error::ListDir { path: dir.clone(), source })?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
            .collect();
        files.sort();
        let mut out = Vec::new();
        for f in files {
            match self.import(&f).await {
                Ok(refs) => {
                    tracing::info!(file = %f.display(), images = refs.len(), "imported image tarball");
                    out.extend(refs);
                }
                Err(e) => tracing::warn!(file = %f.display(), error = %e, "cannot import image tarball"),
            }
        }
        Ok(out)
    }

    /// Removes a name; the image record goes with its last name or when addressed by digest.
    /// Blobs and layers stay until [`ImageStore::gc`].
    pub fn remove(&self, reference: &str) -> Result<()> {
        self.inner.with_index(|index| {
            let Some((i, by_name)) = find(index, reference) else {
                return Err(Error::ImageNotFound(reference.to_string()));
            };
            match by_name {
                Some(name) if index.images[i].names.len() > 1 => index.images[i].names.retain(|n| *n != name),
                _ => {
                    index.images.remove(i);
                }
            }
            Ok(())
        })
    }

    /// Removes blobs and unpacked layers that no image and no container references. `in_use`
    /// holds manifest digests of images that containers use; containers prepared by
    /// [`ImageStore::prepare_rootfs`] are counted without being listed.
    pub async fn gc(&self, in_use: &HashSet<String>) -> Result<GcReport> {
        let inner = self.inner.clone();
        let in_use = in_use.clone();
        tokio::task::spawn_blocking(move || inner.gc(&in_use)).await.map_err(join_err)?
    }

    /// Stacks the image's layers with overlayfs at `target` with a writable layer private to
    /// `container_id`, and mounts it (needs root).
    pub fn prepare_rootfs(&self, image_ref: &str, container_id: &str, target: &Path) -> Result<Mount> {
        self.inner.prepare_rootfs(image_ref, container_id, target)
    }

    /// Unmounts the rootfs at `target` (when mounted) and removes the container's writable layer.
    pub fn remove_rootfs(&self, container_id: &str, target: &Path) -> Result<()> {
        self.inner.remove_rootfs(container_id, target)
    }
}

/// Finds the record for `reference`; the second value is the matched name, if matched by one.
fn find(index: &IndexFile, reference: &str) -> Option<(usize, Option<String>)> {
    if parse_digest(reference).is_ok() {
        return index.images.iter().position(|r| r.digest == reference).map(|i| (i, None));
    }
    if let Ok(name) = ImageName::parse(reference) {
        if let Some(d) = &name.digest {
            let repo = name.repository_path();
            return index
                .images
                .iter()
                .position(|r| r.digest == *d && r.names.iter().any(|n| n.starts_with(&repo)))
                .or_else(|| index.images.iter().position(|r| r.digest == *d))
                .map(|i| (i, None));
        }
        let full = name.to_string();
        if let Some(i) = index.images.iter().position(|r| r.names.contains(&full)) {
            return Some((i, Some(full)));
        }
    }
    let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
    if hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let prefix = format!("sha256:{}", hex.to_ascii_lowercase());
        let hits: Vec<usize> =
            index.images.iter().enumerate().filter(|(_, r)| r.digest.starts_with(&prefix)).map(|(i, _)| i).collect();
        if hits.len() == 1 {
            return Some((hits[0], None));
        }
    }
    None
}

fn valid_container_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl Inner {
    fn index_path(&self) -> PathBuf {
        self.dir.join("index.json")
    }

    fn lock(&self, name: &str, exclusive: bool) -> Result<Flock<File>> {
        let path = self.dir.join(name);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| Error::Lock { path: path.clone(), source })?;
        let arg = if exclusive { FlockArg::LockExclusive } else { FlockArg::LockShared };
        Flock::lock(file, arg).map_err(|(_, e)| Error::Lock { path, source: e.into() })
    }

    /// Held shared while content is added, exclusive while GC deletes.
    pub(crate) fn ingest_lock(&self, exclusive: bool) -> Result<Flock<File>> {
        self.lock("ingest.lock", exclusive)
    }

    pub(crate) fn load_index(&self) -> Result<IndexFile> {
        let path = self.index_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| Error::ParseIndex { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(IndexFile::default()),
            Err(source) => Err(Error::ReadIndex { path, source }),
        }
    }

    /// Loads, changes and atomically rewrites the index under an exclusive lock.
    fn with_index<T>(&self, f: impl FnOnce(&mut IndexFile) -> Result<T>) -> Result<T> {
        let _lock = self.lock("index.lock", true)?;
        let mut index = self.load_index()?;
        let out = f(&mut index)?;
        let path = self.index_path();
        let tmp = self.dir.join(format!(".index.json.{}", rand::random::<u64>()));
        let err = |source| Error::WriteIndex { path: path.clone(), source };
        let bytes = serde_json::to_vec_pretty(&index).map_err(|e| err(io::Error::other(e)))?;
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(err(e));
        }
        Ok(out)
    }

    pub(crate) fn layer_dir(&self, diff_id: &str) -> Result<PathBuf> {
        Ok(self.dir.join("layers").join(parse_digest(diff_id)?))
    }

    /// Unpacks a layer blob once per diff id; verifies the diff id.
    fn ensure_layer(&self, blob_digest: &str, diff_id: &str) -> Result<u64> {
        let target = self.layer_dir(diff_id)?;
        if target.is_dir() {
            return Ok(0);
        }
        let tmp = self.dir.join("layers").join(format!(".tmp-{}", rand::random::<u64>()));
        create_dir(&tmp)?;
        let result = (|| {
            let blob = self.blobs.open_blob(blob_digest)?;
            let unpacked = unpack_layer(self.os.as_ref(), blob, &tmp, &self.limits)?;
            if unpacked.diff_id != diff_id {
                return Err(Error::VerifyDiffId {
                    digest: blob_digest.to_string(),
                    expected: diff_id.to_string(),
                    actual: unpacked.diff_id,
                });
            }
            match fs::rename(&tmp, &target) {
                Ok(()) => Ok(unpacked.size),
                Err(_) if target.is_dir() => Ok(unpacked.size), // unpacked concurrently
                Err(source) => Err(Error::CreateDir { path: target.clone(), source }),
            }
        })();
        if tmp.exists() {
            let _ = fs::remove_dir_all(&tmp);
        }
        if let Ok(size) = &result {
            tracing::debug!(diff_id, size, "unpacked layer");
        }
        result
    }

    fn parse_json<T: serde::de::DeserializeOwned>(&self, digest: &str, what: &str) -> Result<T> {
        let bytes = self.blobs.read_metadata(digest)?;
        serde_json::from_slice(&bytes).map_err(|source| Error::ParseJson { what: format!("{what} {digest}"), source })
    }

    /// Checks an image manifest already in the blob store, unpacks its layers and records it
    /// under `names` (which move away from any other image that had them). `offered`: the
    /// platforms of the index the manifest was chosen from (empty: it was not).
    pub(crate) fn register(
        &self,
        manifest_digest: &str,
        names: Vec<String>,
        offered: Vec<Platform>,
    ) -> Result<ImageInfo> {
        let manifest: RawManifest = self.parse_json(manifest_digest, "manifest")?;
        if manifest.is_index() {
            return Err(Error::UnsupportedMediaType(manifest.media_type.unwrap_or_default()));
        }
        let config_desc =
            manifest.config.ok_or_else(|| Error::UnsupportedMediaType("manifest without config".to_string()))?;
        let config: RawImageConfig = self.parse_json(&config_desc.digest, "image config")?;
        let layers = manifest.layers.unwrap_or_default();
        if layers.len() != config.rootfs.diff_ids.len() {
            return Err(Error::LayerCount { diff_ids: config.rootfs.diff_ids.len(), layers: layers.len() });
        }
        let mut records = Vec::new();
        for (layer, diff_id) in layers.iter().zip(&config.rootfs.diff_ids) {
            if layer.media_type.contains("foreign") || layer.media_type.contains("nondistributable") {
                return Err(Error::UnsupportedMediaType(layer.media_type.clone()));
            }
            self.ensure_layer(&layer.digest, diff_id)?;
            let size = self.blobs.size(&layer.digest).unwrap_or(layer.size);
            records.push(LayerRecord { digest: layer.digest.clone(), diff_id: diff_id.clone(), size });
        }
        let platform = Platform {
            os: config.os.clone().unwrap_or_else(|| "linux".to_string()),
            architecture: config.architecture.clone().unwrap_or_default(),
            variant: config.variant.clone().filter(|v| !v.is_empty()),
        };
        let record = ImageRecord {
            digest: manifest_digest.to_string(),
            names: Vec::new(),
            config_digest: config_desc.digest.clone(),
            config: config.config.clone().unwrap_or_default().into(),
            platform,
            offered,
            size: records.iter().map(|l| l.size).sum(),
            layers: records,
        };
        self.with_index(|index| {
            for other in index.images.iter_mut() {
                if other.digest != record.digest {
                    other.names.retain(|n| !names.contains(n));
                }
            }
            let i = match index.images.iter().position(|r| r.digest == record.digest) {
                Some(i) => {
                    let old_names = std::mem::take(&mut index.images[i].names);
                    index.images[i] = ImageRecord { names: old_names, ..record.clone() };
                    i
                }
                None => {
                    index.images.push(record.clone());
                    index.images.len() - 1
                }
            };
            for n in &names {
                if !index.images[i].names.contains(n) {
                    index.images[i].names.push(n.clone());
                }
            }
            Ok(index.images[i].info())
        })
    }

    fn import_file(&self, path: &Path) -> Result<Vec<ImageRef>> {
        let found = crate::import::read_archive(&self.blobs, path, &self.platform)?;
        let mut refs = Vec::new();
        for image in found {
            let info = self.register(&image.manifest_digest, image.names.clone(), image.offered.clone())?;
            if image.names.is_empty() {
                refs.push(ImageRef { name: None, digest: info.digest.clone() });
            }
            for n in image.names {
                refs.push(ImageRef { name: Some(n), digest: info.digest.clone() });
            }
        }
        Ok(refs)
    }

    fn containers_dir(&self) -> PathBuf {
        self.dir.join("containers")
    }

    fn prepare_rootfs(&self, image_ref: &str, container_id: &str, target: &Path) -> Result<Mount> {
        if !valid_container_id(container_id) {
            return Err(Error::ContainerId(container_id.to_string()));
        }
        let _guard = self.ingest_lock(false)?;
        let index = self.load_index()?;
        let (i, _) = find(&index, image_ref).ok_or_else(|| Error::ImageNotFound(image_ref.to_string()))?;
        let record = &index.images[i];
        let mut lowerdirs = Vec::new();
        for layer in record.layers.iter().rev() {
            self.ensure_layer(&layer.digest, &layer.diff_id)?;
            lowerdirs.push(self.layer_dir(&layer.diff_id)?);
        }
        if lowerdirs.is_empty() {
            let empty = self.dir.join("layers").join("empty");
            create_dir(&empty)?;
            lowerdirs.push(empty);
        }
        let cdir = self.containers_dir().join(container_id);
        let mount =
            Mount { target: target.to_path_buf(), lowerdirs, upperdir: cdir.join("upper"), workdir: cdir.join("work") };
        for d in [&mount.upperdir, &mount.workdir, &mount.target] {
            create_dir(d)?;
        }
        let perr = |source| Error::PrepareRootfs { path: cdir.clone(), source };
        fs::write(cdir.join("image"), &record.digest).map_err(perr)?;
        let options = mount.options();
        if options.len() > MAX_OVERLAY_OPTIONS {
            return Err(Error::OverlayOptionsTooLong { target: target.to_path_buf(), len: options.len() });
        }
        self.os
            .mount_overlay(target, &options)
            .map_err(|source| Error::MountOverlay { target: target.to_path_buf(), source })?;
        tracing::debug!(container = container_id, image = %record.digest, target = %target.display(), "mounted rootfs");
        Ok(mount)
    }

    fn remove_rootfs(&self, container_id: &str, target: &Path) -> Result<()> {
        if !valid_container_id(container_id) {
            return Err(Error::ContainerId(container_id.to_string()));
        }
        if self.os.is_mounted(target) {
            self.os.unmount(target).map_err(|source| Error::Unmount { target: target.to_path_buf(), source })?;
        }
        let cdir = self.containers_dir().join(container_id);
        match fs::remove_dir_all(&cdir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(Error::Remove { path: cdir, source }),
        }
        let _ = fs::remove_dir(target);
        Ok(())
    }

    fn gc(&self, in_use: &HashSet<String>) -> Result<GcReport> {
        let _guard = self.ingest_lock(true)?;
        let index = self.load_index()?;
        let mut roots: HashSet<String> = in_use.clone();
        if let Ok(rd) = fs::read_dir(self.containers_dir()) {
            for e in rd.flatten() {
                if let Ok(d) = fs::read_to_string(e.path().join("image")) {
                    roots.insert(d.trim().to_string());
                }
            }
        }
        let mut keep_blobs = HashSet::new();
        let mut keep_layers = HashSet::new();
        for r in &index.images {
            roots.remove(&r.digest);
            keep_blobs.insert(r.digest.clone());
            keep_blobs.insert(r.config_digest.clone());
            for l in &r.layers {
                keep_blobs.insert(l.digest.clone());
                keep_layers.insert(l.diff_id.clone());
            }
        }
        for root in roots {
            if parse_digest(&root).is_err() || !self.blobs.exists(&root) {
                continue;
            }
            keep_blobs.insert(root.clone());
            let manifest: RawManifest = match self.parse_json(&root, "manifest") {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(digest = %root, error = %e, "cannot read manifest of image in use");
                    continue;
                }
            };
            if let Some(c) = &manifest.config {
                keep_blobs.insert(c.digest.clone());
                if let Ok(cfg) = self.parse_json::<RawImageConfig>(&c.digest, "image config") {
                    keep_layers.extend(cfg.rootfs.diff_ids);
                }
            }
            for l in manifest.layers.unwrap_or_default() {
                keep_blobs.insert(l.digest);
            }
        }
        let mut report = GcReport::default();
        for d in self.blobs.list()? {
            if !keep_blobs.contains(&d) {
                report.bytes_freed += self.blobs.size(&d).unwrap_or(0);
                self.blobs.remove(&d)?;
                report.blobs_removed += 1;
            }
        }
        let layers = self.dir.join("layers");
        let rd = fs::read_dir(&layers).map_err(|source| Error::ListDir { path: layers.clone(), source })?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name == "empty" || keep_layers.contains(&format!("sha256:{name}")) {
                continue;
            }
            let p = e.path();
            fs::remove_dir_all(&p).map_err(|source| Error::Remove { path: p.clone(), source })?;
            if !name.starts_with(".tmp-") {
                report.layers_removed += 1;
            }
        }
        tracing::info!(
            blobs = report.blobs_removed,
            layers = report.layers_removed,
            bytes = report.bytes_freed,
            "image garbage collection done"
        );
        Ok(report)
    }
}

#[cfg(test)]
mod mode_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn image_dirs_are_root_only() {
        let data = tempfile::tempdir().unwrap();
        ImageStore::open(data.path(), Platform::host()).unwrap();
        for d in ["images", "images/layers", "images/containers", "images/import", "images/blobs", "images/tmp"] {
            let mode = fs::metadata(data.path().join(d)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{d}");
        }
    }
}
