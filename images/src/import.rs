//! Reading `docker save` and OCI image-layout tarballs into the blob store in one pass.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Component, Path};

use serde::Deserialize;

use crate::blobs::{parse_digest, BlobStore, MAX_METADATA_BLOB};
use crate::error::{Error, Result};
use crate::model::{
    Descriptor, RawManifest, ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST,
};
use crate::platform::{self, Platform};
use crate::reference::normalize;
use crate::unpack::decompress;

/// An image manifest found in an archive, with the names the archive gives it.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub manifest_digest: String,
    pub names: Vec<String>,
    /// The platforms of the index the manifest was chosen from (empty: not from an index).
    pub offered: Vec<Platform>,
}

#[derive(Debug, Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

fn clean(path: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => parts.push(n.to_str()?.to_string()),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Some(parts.join("/"))
}

/// Reads the archive, stores every blob it carries (verified), and returns its images.
pub(crate) fn read_archive(blobs: &BlobStore, path: &Path, want: &Platform) -> Result<Vec<Found>> {
    let rerr = |source| Error::ReadArchive { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(rerr)?;
    let stream = decompress(file).map_err(rerr)?;
    let mut archive = tar::Archive::new(stream);
    // archive path -> blob digest, for files stored as blobs
    let mut stored: HashMap<String, String> = HashMap::new();
    // archive path -> small JSON files
    let mut small: HashMap<String, Vec<u8>> = HashMap::new();
    // archive path -> archive path (symlinks between legacy layer folders)
    let mut aliases: HashMap<String, String> = HashMap::new();
    for entry in archive.entries().map_err(rerr)? {
        let mut entry = entry.map_err(rerr)?;
        let Some(name) = entry.path().ok().and_then(|p| clean(&p)) else { continue };
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            if let Ok(Some(target)) = entry.link_name() {
                let base = if kind.is_symlink() {
                    Path::new(&name).parent().unwrap_or(Path::new("")).join(target)
                } else {
                    target.to_path_buf()
                };
                if let Some(t) = clean(&base) {
                    aliases.insert(name, t);
                }
            }
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let size = entry.header().size().map_err(rerr)?;
        if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            let digest = format!("sha256:{hex}");
            parse_digest(&digest)?;
            if !blobs.exists(&digest) {
                let mut w = blobs.writer(Some(&digest))?;
                io::copy(&mut entry, &mut w).map_err(rerr)?;
                w.commit()?;
            }
            stored.insert(name, digest);
        } else if name.ends_with("layer.tar") {
            let mut w = blobs.writer(None)?;
            io::copy(&mut entry, &mut w).map_err(rerr)?;
            stored.insert(name, w.commit()?);
        } else if (name.ends_with(".json") || name == "oci-layout" || name == "repositories")
            && size <= MAX_METADATA_BLOB
        {
            let mut buf = Vec::with_capacity(size as usize);
            (&mut entry).take(MAX_METADATA_BLOB).read_to_end(&mut buf).map_err(rerr)?;
            small.insert(name, buf);
        }
    }
    let resolve = |member: &str| -> Result<String> {
        let mut m = clean(Path::new(member)).unwrap_or_default();
        for _ in 0..8 {
            match aliases.get(&m) {
                Some(t) => m = t.clone(),
                None => break,
            }
        }
        stored
            .get(&m)
            .cloned()
            .ok_or_else(|| Error::ArchiveMember { path: path.to_path_buf(), member: member.to_string() })
    };

    if let Some(bytes) = small.get("manifest.json") {
        let entries: Vec<DockerManifestEntry> = serde_json::from_slice(bytes)
            .map_err(|source| Error::ParseJson { what: format!("{} manifest.json", path.display()), source })?;
        let mut out = Vec::new();
        for e in entries {
            let config_digest = match resolve(&e.config) {
                Ok(d) => d,
                Err(_) => {
                    let key = clean(Path::new(&e.config)).unwrap_or_default();
                    let bytes = small
                        .get(&key)
                        .ok_or_else(|| Error::ArchiveMember { path: path.to_path_buf(), member: e.config.clone() })?;
                    blobs.put(bytes, None)?
                }
            };
            let mut layers = Vec::new();
            for l in &e.layers {
                let digest = resolve(l)?;
                let size = blobs.size(&digest).unwrap_or(0);
                layers.push(Descriptor {
                    media_type: OCI_LAYER_TAR.to_string(),
                    digest,
                    size,
                    platform: None,
                    annotations: None,
                });
            }
            let manifest = RawManifest {
                schema_version: 2,
                media_type: Some(OCI_MANIFEST.to_string()),
                config: Some(Descriptor {
                    media_type: OCI_CONFIG.to_string(),
                    size: blobs.size(&config_digest).unwrap_or(0),
                    digest: config_digest,
                    platform: None,
                    annotations: None,
                }),
                layers: Some(layers),
                manifests: None,
            };
            let bytes = serde_json::to_vec(&manifest)
                .map_err(|source| Error::ParseJson { what: "synthesized manifest".to_string(), source })?;
            let manifest_digest = blobs.put(&bytes, None)?;
            let mut names = Vec::new();
            for t in e.repo_tags.unwrap_or_default() {
                names.push(normalize(&t)?);
            }
            out.push(Found { manifest_digest, names, offered: Vec::new() });
        }
        return Ok(out);
    }

    if let Some(bytes) = small.get("index.json") {
        let index: RawManifest = serde_json::from_slice(bytes)
            .map_err(|source| Error::ParseJson { what: format!("{} index.json", path.display()), source })?;
        let mut out: Vec<Found> = Vec::new();
        let mut skipped = Vec::new();
        for entry in index.manifests.unwrap_or_default() {
            let names = names_of(&entry)?;
            let mut offered = Vec::new();
            let Some(manifest_digest) = resolve_entry(blobs, &entry, want, &mut skipped, &mut offered, 0)? else {
                continue;
            };
            match out.iter_mut().find(|f| f.manifest_digest == manifest_digest) {
                Some(f) => {
                    for n in names {
                        if !f.names.contains(&n) {
                            f.names.push(n);
                        }
                    }
                }
                None => out.push(Found { manifest_digest, names, offered }),
            }
        }
        if out.is_empty() && !skipped.is_empty() {
            return Err(Error::ResolvePlatform { platform: want.to_string(), available: skipped.join(", ") });
        }
        return Ok(out);
    }
    Err(Error::ArchiveFormat { path: path.to_path_buf() })
}

fn names_of(entry: &Descriptor) -> Result<Vec<String>> {
    let ann = entry.annotations.clone().unwrap_or_default();
    let pick = |key: &str| ann.get(key).filter(|v| v.contains(':') || v.contains('/')).cloned();
    let name = pick(ANNOTATION_CONTAINERD_NAME).or_else(|| pick(ANNOTATION_REF_NAME));
    Ok(match name {
        Some(n) => vec![normalize(&n)?],
        None => Vec::new(),
    })
}

/// Follows an index entry down to the image manifest for `want`; `offered` gets the platforms
/// of the innermost index on the way.
fn resolve_entry(
    blobs: &BlobStore,
    entry: &Descriptor,
    want: &Platform,
    skipped: &mut Vec<String>,
    offered: &mut Vec<Platform>,
    depth: u32,
) -> Result<Option<String>> {
    if depth > 4 {
        return Err(Error::UnsupportedMediaType("image index nested too deeply".to_string()));
    }
    if let Some(p) = &entry.platform {
        if want.score(p).is_none() {
            skipped.push(p.to_string());
            return Ok(None);
        }
    }
    let bytes = blobs.read_metadata(&entry.digest)?;
    let m: RawManifest = serde_json::from_slice(&bytes)
        .map_err(|source| Error::ParseJson { what: format!("manifest {}", entry.digest), source })?;
    if !m.is_index() {
        return Ok(Some(entry.digest.clone()));
    }
    let children = m.manifests.unwrap_or_default();
    let with_platform: Vec<(usize, &Platform)> =
        children.iter().enumerate().filter_map(|(i, c)| c.platform.as_ref().map(|p| (i, p))).collect();
    let choice = platform::choose(want, with_platform.iter().map(|(i, p)| (*i, *p)));
    match choice {
        Some(i) => {
            *offered = with_platform.iter().map(|(_, p)| (*p).clone()).collect();
            resolve_entry(blobs, &children[i], want, skipped, offered, depth + 1)
        }
        None => {
            skipped.extend(with_platform.iter().map(|(_, p)| p.to_string()));
            Ok(None)
        }
    }
}
