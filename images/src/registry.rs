//! Registries config (`registries.toml`) and pulling over the OCI distribution protocol.

use std::collections::BTreeMap;
use std::path::Path;

use futures::{StreamExt, TryStreamExt};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;

use crate::blobs::{sha256_digest, MAX_METADATA_BLOB};
use crate::error::{Error, Result};
use crate::model::{RawManifest, MANIFEST_TYPES};
use crate::platform;
use crate::reference::{ImageName, DEFAULT_REGISTRY};
use crate::store::Inner;

/// Layers fetched at once.
const PARALLEL_BLOBS: usize = 3;

/// Credentials for one pull; [`Auth::Anonymous`] falls back to those in `registries.toml`.
/// Registries that answer with a bearer-token challenge get a token from their token service,
/// anonymously or with the basic credentials.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Auth {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// A ready bearer token.
    Bearer(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Anonymous => write!(f, "Anonymous"),
            Auth::Basic { username, .. } => write!(f, "Basic({username})"),
            Auth::Bearer(_) => write!(f, "Bearer(..)"),
        }
    }
}

/// Settings for one registry host (`host[:port]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Hosts tried in order before this one; each may have its own entry.
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// Plain HTTP.
    #[serde(default)]
    pub insecure: bool,
    /// HTTPS without certificate verification.
    #[serde(default)]
    pub skip_verify: bool,
    /// A PEM file with extra CA certificates to trust for this host.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
}

/// The contents of `registries.toml`: see docs/images.md.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registries {
    #[serde(default = "one")]
    pub version: u32,
    #[serde(default, rename = "registry")]
    pub registries: BTreeMap<String, RegistryConfig>,
}

fn one() -> u32 {
    1
}

fn canonical_host(host: &str) -> &str {
    match host {
        "index.docker.io" | "registry-1.docker.io" => DEFAULT_REGISTRY,
        h => h,
    }
}

impl Registries {
    /// Parses a `registries.toml`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| Error::LoadRegistries { path: path.to_path_buf(), source })?;
        toml::from_str(&text).map_err(|source| Error::ParseRegistries { path: path.to_path_buf(), source })
    }

    /// Like [`Registries::load`], with defaults when the file does not exist.
    pub fn load_or_default(path: &Path) -> Result<Self> {
        if path.exists() {
            Self::load(path)
        } else {
            Ok(Self::default())
        }
    }

    /// Adds or replaces the settings of one host.
    pub fn with(mut self, host: &str, config: RegistryConfig) -> Self {
        self.registries.insert(canonical_host(host).to_string(), config);
        self
    }

    /// The settings of one host (defaults when not configured).
    pub fn get(&self, host: &str) -> RegistryConfig {
        self.registries.get(canonical_host(host)).cloned().unwrap_or_default()
    }

    /// Hosts to try for `registry`: its mirrors, then itself.
    pub fn endpoints(&self, registry: &str) -> Vec<String> {
        let mut out = self.get(registry).mirrors;
        out.push(canonical_host(registry).to_string());
        out
    }

    fn auth_for(&self, host: &str, explicit: &Auth) -> RegistryAuth {
        match explicit {
            Auth::Basic { username, password } => return RegistryAuth::Basic(username.clone(), password.clone()),
            Auth::Bearer(t) => return RegistryAuth::Bearer(t.clone()),
            Auth::Anonymous => {}
        }
        let c = self.get(host);
        match (c.token, c.username, c.password) {
            (Some(t), _, _) => RegistryAuth::Bearer(t),
            (None, Some(u), p) => RegistryAuth::Basic(u, p.unwrap_or_default()),
            _ => RegistryAuth::Anonymous,
        }
    }
}

fn pull_err(name: &ImageName, host: &str) -> impl Fn(oci_client::errors::OciDistributionError) -> Error {
    let reference = name.to_string();
    let registry = host.to_string();
    move |source| Error::Pull { reference: reference.clone(), registry: registry.clone(), source }
}

/// What a pull fetched: the image manifest for the store's platform, and the platforms of the
/// index it was chosen from (empty when the reference named a single manifest).
pub(crate) struct Fetched {
    pub manifest_digest: String,
    pub offered: Vec<platform::Platform>,
}

/// Fetches the manifest, config and layers of `name` for the store's platform into the blob
/// store, trying mirrors first.
pub(crate) async fn fetch(inner: &Inner, name: &ImageName, registries: &Registries, auth: &Auth) -> Result<Fetched> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut last = None;
    for host in registries.endpoints(&name.registry) {
        match fetch_from(inner, name, registries, auth, &host).await {
            Ok(d) => return Ok(d),
            Err(e) => {
                tracing::warn!(image = %name, registry = %host, error = %e, "pull from registry failed");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::ImageNotFound(name.to_string())))
}

async fn fetch_from(
    inner: &Inner,
    name: &ImageName,
    registries: &Registries,
    auth: &Auth,
    host: &str,
) -> Result<Fetched> {
    let settings = registries.get(host);
    let err = pull_err(name, host);
    let mut extra_root_certificates = Vec::new();
    if let Some(ca) = &settings.ca_file {
        let data = tokio::fs::read(ca).await.map_err(|source| Error::LoadRegistries { path: ca.clone(), source })?;
        extra_root_certificates.push(Certificate { encoding: CertificateEncoding::Pem, data });
    }
    let config = ClientConfig {
        protocol: if settings.insecure { ClientProtocol::Http } else { ClientProtocol::Https },
        accept_invalid_certificates: settings.skip_verify,
        extra_root_certificates,
        platform_resolver: None,
        connect_timeout: Some(std::time::Duration::from_secs(15)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..Default::default()
    };
    let client = Client::try_from(config).map_err(&err)?;
    let repo = name.repository.clone();
    let reference = match (&name.tag, &name.digest) {
        (Some(t), Some(d)) => Reference::with_tag_and_digest(host.to_string(), repo.clone(), t.clone(), d.clone()),
        (_, Some(d)) => Reference::with_digest(host.to_string(), repo.clone(), d.clone()),
        (Some(t), None) => Reference::with_tag(host.to_string(), repo.clone(), t.clone()),
        (None, None) => Reference::with_tag(host.to_string(), repo.clone(), "latest".to_string()),
    };
    let registry_auth = registries.auth_for(host, auth);

    let (bytes, _) = client.pull_manifest_raw(&reference, &registry_auth, MANIFEST_TYPES).await.map_err(&err)?;
    let mut digest = store_manifest(inner, &bytes, name.digest.as_deref())?;
    let mut manifest = parse_manifest(&bytes, &digest)?;
    let mut offered = Vec::new();
    if manifest.is_index() {
        let children = manifest.manifests.clone().unwrap_or_default();
        let candidates: Vec<(usize, &platform::Platform)> =
            children.iter().enumerate().filter_map(|(i, c)| c.platform.as_ref().map(|p| (i, p))).collect();
        let Some(i) = platform::choose(&inner.platform, candidates.iter().map(|(i, p)| (*i, *p))) else {
            let available: Vec<String> = candidates.iter().map(|(_, p)| p.to_string()).collect();
            return Err(Error::ResolvePlatform {
                platform: inner.platform.to_string(),
                available: available.join(", "),
            });
        };
        offered = candidates.iter().map(|(_, p)| (*p).clone()).collect();
        let child = children[i].digest.clone();
        let child_ref = Reference::with_digest(host.to_string(), repo.clone(), child.clone());
        let (bytes, _) = client.pull_manifest_raw(&child_ref, &registry_auth, MANIFEST_TYPES).await.map_err(&err)?;
        digest = store_manifest(inner, &bytes, Some(&child))?;
        manifest = parse_manifest(&bytes, &digest)?;
        if manifest.is_index() {
            return Err(Error::UnsupportedMediaType("nested image index".to_string()));
        }
    }
    let config =
        manifest.config.clone().ok_or_else(|| Error::UnsupportedMediaType("manifest without config".into()))?;
    let mut wanted = vec![config];
    wanted.extend(manifest.layers.clone().unwrap_or_default());
    let missing: Vec<_> = wanted.into_iter().filter(|d| !inner.blobs.exists(&d.digest)).collect();
    futures::stream::iter(missing.into_iter().map(|d| {
        let client = &client;
        let reference = &reference;
        let err = &err;
        async move {
            crate::blobs::parse_digest(&d.digest)?;
            if crate::peers::fetch_from_sources(inner, &d.digest, d.size).await? {
                return Ok(());
            }
            let desc = OciDescriptor {
                media_type: d.media_type.clone(),
                digest: d.digest.clone(),
                size: d.size as i64,
                ..Default::default()
            };
            let stream = client.pull_blob_stream(reference, &desc).await.map_err(err)?;
            let n = inner.blobs.fetch(&d.digest, stream.stream).await?;
            crate::stats::fetched_from_registry(n);
            tracing::debug!(digest = %d.digest, bytes = n, "fetched blob");
            Ok::<_, Error>(())
        }
    }))
    .buffer_unordered(PARALLEL_BLOBS)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(Fetched { manifest_digest: digest, offered })
}

fn store_manifest(inner: &Inner, bytes: &[u8], expected: Option<&str>) -> Result<String> {
    if bytes.len() as u64 > MAX_METADATA_BLOB {
        return Err(Error::LayerLimit("manifest larger than 16 MiB"));
    }
    let digest = sha256_digest(bytes);
    if let Some(e) = expected {
        if e != digest {
            return Err(Error::VerifyDigest { expected: e.to_string(), actual: digest });
        }
    }
    inner.blobs.put(bytes, Some(&digest))
}

fn parse_manifest(bytes: &[u8], digest: &str) -> Result<RawManifest> {
    serde_json::from_slice(bytes).map_err(|source| Error::ParseJson { what: format!("manifest {digest}"), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_toml_parses() {
        let r: Registries = toml::from_str(
            r#"
version = 1
[registry."docker.io"]
mirrors = ["10.0.0.5:5000", "mirror.example.com"]
[registry."10.0.0.5:5000"]
insecure = true
[registry."ghcr.io"]
username = "bot"
password = "secret"
"#,
        )
        .unwrap();
        assert_eq!(r.endpoints("docker.io"), vec!["10.0.0.5:5000", "mirror.example.com", "docker.io"]);
        assert_eq!(r.endpoints("index.docker.io"), r.endpoints("docker.io"));
        assert!(r.get("10.0.0.5:5000").insecure);
        assert!(!r.get("mirror.example.com").insecure);
        assert_eq!(r.auth_for("ghcr.io", &Auth::Anonymous), RegistryAuth::Basic("bot".into(), "secret".into()));
        assert_eq!(r.auth_for("ghcr.io", &Auth::Bearer("t".into())), RegistryAuth::Bearer("t".into()));
        assert_eq!(r.auth_for("quay.io", &Auth::Anonymous), RegistryAuth::Anonymous);
        assert!(toml::from_str::<Registries>("[registry.\"x\"]\nplain = true\n").is_err());
    }
}
