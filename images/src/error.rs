//! Errors of the image store.

use std::path::PathBuf;

/// Result of image store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while storing, importing, pulling or unpacking images.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("create directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("write blob {digest}")]
    WriteBlob {
        digest: String,
        #[source]
        source: std::io::Error,
    },
    #[error("read blob {digest}")]
    ReadBlob {
        digest: String,
        #[source]
        source: std::io::Error,
    },
    #[error("blob digest mismatch: expected {expected}, got {actual}")]
    VerifyDigest { expected: String, actual: String },
    #[error("invalid digest {0:?}")]
    ParseDigest(String),
    #[error("invalid image reference {reference:?}: {reason}")]
    ParseReference { reference: String, reason: &'static str },
    #[error("read image index {path}")]
    ReadIndex {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parse image index {path}")]
    ParseIndex {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("list {path}")]
    ListDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("write image index {path}")]
    WriteIndex {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parse {what}")]
    ParseJson {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("unsupported media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("no manifest for platform {platform} in image index (available: {available})")]
    ResolvePlatform { platform: String, available: String },
    #[error("image config has {diff_ids} diff ids but the manifest has {layers} layers")]
    LayerCount { diff_ids: usize, layers: usize },
    #[error("read archive {path}")]
    ReadArchive {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("archive {path} is neither an OCI image layout nor a docker save tarball")]
    ArchiveFormat { path: PathBuf },
    #[error("archive {path} refers to {member:?}, which it does not contain")]
    ArchiveMember { path: PathBuf, member: String },
    #[error("hostile layer entry {entry:?}: {reason}")]
    HostileEntry { entry: String, reason: &'static str },
    #[error("layer exceeds limit: {0}")]
    LayerLimit(&'static str),
    #[error("unpack layer entry {entry:?}")]
    UnpackEntry {
        entry: String,
        #[source]
        source: std::io::Error,
    },
    #[error("read layer {digest}")]
    ReadLayer {
        digest: String,
        #[source]
        source: std::io::Error,
    },
    #[error("layer {digest} has diff id {actual}, config says {expected}")]
    VerifyDiffId { digest: String, expected: String, actual: String },
    #[error("image {0:?} not found")]
    ImageNotFound(String),
    #[error("load registries config {path}")]
    LoadRegistries {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parse registries config {path}")]
    ParseRegistries {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("pull {reference} from {registry}")]
    Pull {
        reference: String,
        registry: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("prepare rootfs {path}")]
    PrepareRootfs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mount overlay on {target}")]
    MountOverlay {
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("overlay mount options for {target} are too long ({len} bytes)")]
    OverlayOptionsTooLong { target: PathBuf, len: usize },
    #[error("unmount {target}")]
    Unmount {
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("remove {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid container id {0:?}")]
    ContainerId(String),
    #[error("background task failed")]
    Join(#[source] tokio::task::JoinError),
}
