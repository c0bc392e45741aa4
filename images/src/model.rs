//! Wire formats (OCI and Docker manifests, indexes, configs) and the records kept per image.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::platform::Platform;

pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub(crate) const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub(crate) const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Media types accepted when fetching a manifest.
pub(crate) const MANIFEST_TYPES: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image manifest or an image index (Docker's manifest list), told apart by `manifests`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RawManifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<Descriptor>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifests: Option<Vec<Descriptor>>,
}

impl RawManifest {
    pub(crate) fn is_index(&self) -> bool {
        self.manifests.is_some() || matches!(self.media_type.as_deref(), Some(OCI_INDEX) | Some(DOCKER_LIST))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct RawRunConfig {
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default)]
    pub user: Option<String>,
    #[serde(rename = "ExposedPorts", default)]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(rename = "StopSignal", default)]
    pub stop_signal: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct RawRootfs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RawImageConfig {
    #[serde(default)]
    pub architecture: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: Option<RawRunConfig>,
    #[serde(default)]
    pub rootfs: RawRootfs,
}

/// How a container of this image runs unless the Pod says otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    /// Empty means `/`.
    pub working_dir: String,
    /// `user[:group]`, names or ids; empty means root.
    pub user: String,
    /// `80/tcp`, `53/udp`.
    pub exposed_ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

impl From<RawRunConfig> for ImageConfig {
    fn from(c: RawRunConfig) -> Self {
        Self {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
            exposed_ports: c.exposed_ports.map(|m| m.into_keys().collect()).unwrap_or_default(),
            stop_signal: c.stop_signal.filter(|s| !s.is_empty()),
        }
    }
}

/// A stored image as callers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Fully qualified names (`docker.io/library/nginx:latest`); empty for a dangling image.
    pub names: Vec<String>,
    /// Manifest digest.
    pub digest: String,
    pub config: ImageConfig,
    /// Bytes of the manifest's layer blobs (compressed, as transferred).
    pub size: u64,
    pub platform: Platform,
    /// Every platform the image offers: those of the index it came from, or just `platform`
    /// for a single-manifest image (what a scheduler checks a node's architecture against).
    pub platforms: Vec<Platform>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LayerRecord {
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ImageRecord {
    pub digest: String,
    pub names: Vec<String>,
    pub config_digest: String,
    pub config: ImageConfig,
    pub platform: Platform,
    /// The platforms of the index the manifest was chosen from; empty when it was not (or for
    /// records written before this field existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offered: Vec<Platform>,
    pub layers: Vec<LayerRecord>,
    pub size: u64,
}

impl ImageRecord {
    pub(crate) fn info(&self) -> ImageInfo {
        ImageInfo {
            names: self.names.clone(),
            digest: self.digest.clone(),
            config: self.config.clone(),
            size: self.size,
            platform: self.platform.clone(),
            platforms: if self.offered.is_empty() { vec![self.platform.clone()] } else { self.offered.clone() },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct IndexFile {
    pub version: u32,
    pub images: Vec<ImageRecord>,
}

impl Default for IndexFile {
    fn default() -> Self {
        Self { version: 1, images: Vec::new() }
    }
}
