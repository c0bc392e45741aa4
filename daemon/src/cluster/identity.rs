//! What a node keeps in its data dir besides the store: who it is, which cluster it belongs
//! to, and the cluster's secrets (CA, join token). Written once when the node is created or
//! joins; read on every start, so a restarted node rejoins with it whatever the flags say.
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shoal_gossip::pki::ClusterSecrets;

pub const IDENTITY_FILE: &str = "node.json";
pub use crate::config::SECRETS_FILE;
pub const NODE_CERT: &str = "pki/node.crt";
pub const NODE_KEY: &str = "pki/node.key";
pub const CA_CERT: &str = "pki/ca.crt";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is damaged ({message}); restore the data dir from a backup or remove it to join as a new node")]
    Corrupt { path: PathBuf, message: String },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The node's identity, `node.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub name: String,
    /// Raft node id.
    pub node_id: u64,
    /// Identifies the cluster (the CA's hash); gossip from other clusters is ignored.
    pub cluster_id: String,
    pub advertise: IpAddr,
    pub gossip_port: u16,
    pub peer_port: u16,
    pub api_port: u16,
    /// True once this node's Raft state was initialised or it was added to the cluster.
    pub member: bool,
}

/// Everything read from the data dir.
pub struct NodeState {
    pub identity: Identity,
    pub secrets: ClusterSecrets,
    pub node_cert_pem: String,
    pub node_key_pem: String,
}

fn read(path: &Path) -> Result<Option<String>, IdentityError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IdentityError::Read { path: path.into(), source }),
    }
}

fn must_read(path: &Path) -> Result<String, IdentityError> {
    read(path)?.ok_or_else(|| IdentityError::Corrupt { path: path.into(), message: "file is missing".into() })
}

/// Writes a file atomically (temp file, fsync, rename) with the given mode.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), IdentityError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let err = |source| IdentityError::Write { path: path.into(), source };
    if let Some(parent) = path.parent() {
        // Root only, as the data dir (pki/ lists the node key).
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent).map_err(err)?;
        // A dir made 0755 by an older version is closed too.
        std::fs::set_permissions(parent, std::os::unix::fs::PermissionsExt::from_mode(0o700)).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

impl NodeState {
    /// Reads the node state of a data dir; `None` for a fresh data dir.
    pub fn load(dir: &Path) -> Result<Option<NodeState>, IdentityError> {
        let id_path = dir.join(IDENTITY_FILE);
        let Some(text) = read(&id_path)? else { return Ok(None) };
        let identity: Identity = serde_json::from_str(&text)
            .map_err(|e| IdentityError::Corrupt { path: id_path.clone(), message: e.to_string() })?;
        let sec_path = dir.join(SECRETS_FILE);
        let secrets: ClusterSecrets = serde_json::from_str(&must_read(&sec_path)?)
            .map_err(|e| IdentityError::Corrupt { path: sec_path, message: e.to_string() })?;
        Ok(Some(NodeState {
            identity,
            secrets,
            node_cert_pem: must_read(&dir.join(NODE_CERT))?,
            node_key_pem: must_read(&dir.join(NODE_KEY))?,
        }))
    }

    /// Writes the node state (secrets and keys readable by root only).
    pub fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        write_atomic(&dir.join(SECRETS_FILE), to_json(&self.secrets).as_bytes(), 0o600)?;
        write_atomic(&dir.join(NODE_CERT), self.node_cert_pem.as_bytes(), 0o644)?;
        write_atomic(&dir.join(NODE_KEY), self.node_key_pem.as_bytes(), 0o600)?;
        write_atomic(&dir.join(CA_CERT), self.secrets.ca_cert_pem.as_bytes(), 0o644)?;
        // The identity last: its presence means the rest is complete.
        write_atomic(&dir.join(IDENTITY_FILE), to_json(&self.identity).as_bytes(), 0o644)?;
        Ok(())
    }
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Makes the data dir readable by root only (0700): it holds the cluster CA, the gossip key
/// and the store.
pub fn restrict_data_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Gives `path` (a file, or every file below a directory) the given mode; directories get 0700.
pub fn restrict_files(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta.is_dir() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
        for entry in std::fs::read_dir(path)? {
            restrict_files(&entry?.path(), mode)?;
        }
    } else if meta.is_file() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// File holding the last gossip generation this node used.
pub const GENERATION_FILE: &str = "gossip-generation";

/// The gossip generation for this start: the wall clock in milliseconds, but always above the
/// last one used, so a node whose clock was stepped back still restarts as a newer incarnation
/// (peers ignore gossip from a generation older than the one they know).
pub fn next_generation(dir: &Path, now_ms: u64) -> Result<u64, IdentityError> {
    let path = dir.join(GENERATION_FILE);
    let last = read(&path)?.and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
    let next = now_ms.max(last.saturating_add(1));
    write_atomic(&path, next.to_string().as_bytes(), 0o644)?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn data_dir_store_and_secrets_are_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("store/snapshots")).unwrap();
        std::fs::write(data.join("store/store.redb"), b"x").unwrap();
        std::fs::write(data.join("store/snapshots/1"), b"x").unwrap();
        restrict_data_dir(&data).unwrap();
        restrict_files(&data.join("store"), 0o600).unwrap();
        let secrets = ClusterSecrets::generate("test").unwrap();
        let cert = secrets.issue_node_cert("n1", &[]).unwrap();
        let state = NodeState {
            identity: Identity {
                name: "n1".into(),
                node_id: 1,
                cluster_id: "c".into(),
                advertise: "127.0.0.1".parse().unwrap(),
                gossip_port: 1,
                peer_port: 2,
                api_port: 3,
                member: true,
            },
            secrets,
            node_cert_pem: cert.cert_pem,
            node_key_pem: cert.key_pem,
        };
        state.save(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("store")), 0o700);
        assert_eq!(mode(&data.join("store/store.redb")), 0o600);
        assert_eq!(mode(&data.join("store/snapshots/1")), 0o600);
        assert_eq!(mode(&data.join(SECRETS_FILE)), 0o600);
        assert_eq!(mode(&data.join(NODE_KEY)), 0o600);
        assert_eq!(mode(&data.join("pki")), 0o700);
        // The keyring is saved with the secrets and read back.
        let back = NodeState::load(&data).unwrap().unwrap();
        assert!(back.secrets.gossip.is_sealed());
        assert_eq!(back.secrets.gossip, state.secrets.gossip);
        // A missing path is not an error.
        restrict_files(&data.join("nothing-here"), 0o600).unwrap();
    }

    #[test]
    fn secrets_without_a_gossip_keyring_load_as_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = ClusterSecrets::generate("test").unwrap();
        let mut v = serde_json::to_value(&secrets).unwrap();
        v.as_object_mut().unwrap().remove("gossip");
        let old: ClusterSecrets = serde_json::from_value(v).unwrap();
        assert!(!old.gossip.is_sealed());
        assert!(old.gossip.accept_plaintext && old.gossip.primary.is_none());
        drop(dir);
    }

    #[test]
    fn generation_grows_even_when_the_clock_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(next_generation(dir.path(), 5_000).unwrap(), 5_000);
        assert_eq!(next_generation(dir.path(), 1_000).unwrap(), 5_001);
        assert_eq!(next_generation(dir.path(), 9_000).unwrap(), 9_000);
        std::fs::write(dir.path().join(GENERATION_FILE), "garbage").unwrap();
        assert_eq!(next_generation(dir.path(), 7).unwrap(), 7);
    }
}
