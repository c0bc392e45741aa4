//! Builders for image tarballs used by the integration tests.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// An uncompressed layer tar; entries are (path, kind, data, link target).
pub struct Layer(tar::Builder<Vec<u8>>);

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    pub fn new() -> Self {
        Layer(tar::Builder::new(Vec::new()))
    }
    pub fn raw(mut self, path: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>, mode: u32) -> Self {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }
    pub fn dir(self, p: &str) -> Self {
        self.raw(p, tar::EntryType::Directory, b"", None, 0o755)
    }
    pub fn file(self, p: &str, data: &[u8]) -> Self {
        self.raw(p, tar::EntryType::Regular, data, None, 0o644)
    }
    pub fn exe(self, p: &str, data: &[u8]) -> Self {
        self.raw(p, tar::EntryType::Regular, data, None, 0o755)
    }
    pub fn symlink(self, p: &str, target: &str) -> Self {
        self.raw(p, tar::EntryType::Symlink, b"", Some(target), 0o777)
    }
    pub fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

pub fn config_json(arch: &str, layers: &[Vec<u8>], cmd: &[&str]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| digest(l)).collect();
    serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": {
            "Cmd": cmd,
            "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            "WorkingDir": "/srv",
            "User": "1000:1000",
            "ExposedPorts": {"8080/tcp": {}}
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap()
}

fn add_file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).unwrap();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// One platform's image: uncompressed layers and the manifest written into a layout.
pub struct Img {
    pub arch: &'static str,
    pub layers: Vec<Vec<u8>>,
    pub cmd: Vec<&'static str>,
}

/// Adds the blobs of `img` (layers gzip-compressed) and returns (manifest digest, size).
fn add_image(b: &mut tar::Builder<Vec<u8>>, img: &Img) -> (String, usize) {
    let config = config_json(img.arch, &img.layers, &img.cmd);
    add_file(b, &format!("blobs/sha256/{}", &digest(&config)[7..]), &config);
    let mut descs = Vec::new();
    for l in &img.layers {
        let gz = gzip(l);
        add_file(b, &format!("blobs/sha256/{}", &digest(&gz)[7..]), &gz);
        descs.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(&gz), "size": gz.len()}));
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": descs
    }))
    .unwrap();
    add_file(b, &format!("blobs/sha256/{}", &digest(&manifest)[7..]), &manifest);
    (digest(&manifest), manifest.len())
}

/// Writes an OCI image-layout tarball of one image named `name` (a ref.name annotation);
/// returns the manifest digest.
pub fn oci_archive(path: &Path, name: &str, img: &Img) -> String {
    let mut b = tar::Builder::new(Vec::new());
    add_file(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let (md, size) = add_image(&mut b, img);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": size,
            "annotations": {"org.opencontainers.image.ref.name": name}
        }]
    }))
    .unwrap();
    add_file(&mut b, "index.json", &index);
    std::fs::write(path, b.into_inner().unwrap()).unwrap();
    md
}

/// Writes an OCI layout whose index.json points to a multi-arch image index; returns
/// (index digest, manifest digest per image).
pub fn oci_multiarch_archive(path: &Path, name: &str, imgs: &[Img]) -> (String, Vec<String>) {
    let mut b = tar::Builder::new(Vec::new());
    add_file(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let mut entries = Vec::new();
    let mut digests = Vec::new();
    for img in imgs {
        let (md, size) = add_image(&mut b, img);
        entries.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": size,
            "platform": {"os": "linux", "architecture": img.arch}
        }));
        digests.push(md);
    }
    let inner = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries
    }))
    .unwrap();
    add_file(&mut b, &format!("blobs/sha256/{}", &digest(&inner)[7..]), &inner);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest(&inner), "size": inner.len(),
            "annotations": {"org.opencontainers.image.ref.name": name}
        }]
    }))
    .unwrap();
    add_file(&mut b, "index.json", &index);
    std::fs::write(path, b.into_inner().unwrap()).unwrap();
    (digest(&inner), digests)
}

/// Writes a legacy `docker save` tarball (`<id>/layer.tar`, `<config>.json`, manifest.json).
pub fn docker_save(path: &Path, repo_tags: &[&str], img: &Img) {
    let mut b = tar::Builder::new(Vec::new());
    let config = config_json(img.arch, &img.layers, &img.cmd);
    let config_name = format!("{}.json", &digest(&config)[7..]);
    add_file(&mut b, &config_name, &config);
    let mut layer_paths = Vec::new();
    for (i, l) in img.layers.iter().enumerate() {
        let p = format!("{:064x}/layer.tar", i + 1);
        add_file(&mut b, &p, l);
        add_file(&mut b, &format!("{:064x}/VERSION", i + 1), b"1.0");
        layer_paths.push(p);
    }
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_name, "RepoTags": repo_tags, "Layers": layer_paths
    }]))
    .unwrap();
    add_file(&mut b, "manifest.json", &manifest);
    std::fs::write(path, b.into_inner().unwrap()).unwrap();
}
