//! Image names resolved the way Docker resolves them.

use crate::error::{Error, Result};

/// The registry that short names resolve to.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// A parsed, fully qualified image reference: `registry/repository[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageName {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageName {
    /// Parses a reference as Docker does: `nginx` is `docker.io/library/nginx:latest`,
    /// `whatwant/node-web:1.0` is `docker.io/whatwant/node-web:1.0`, a first component with a
    /// dot, a colon or `localhost` names the registry.
    pub fn parse(reference: &str) -> Result<Self> {
        let bad = |reason| Error::ParseReference { reference: reference.to_string(), reason };
        let s = reference.trim();
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if s.len() > 1024 {
            return Err(bad("too long"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                crate::blobs::parse_digest(d).map_err(|_| bad("invalid digest"))?;
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(rest[i + 1..].to_string())),
            _ => (rest, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
                && !t.starts_with(['.', '-']);
            if !ok {
                return Err(bad("invalid tag"));
            }
        }
        let (registry, mut repository) = match name.split_once('/') {
            Some((first, remainder)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_string(), remainder.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
            DEFAULT_REGISTRY.to_string()
        } else {
            registry
        };
        if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            repository = format!("library/{repository}");
        }
        if repository.is_empty()
            || repository.split('/').any(|c| {
                c.is_empty()
                    || !c
                        .chars()
                        .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '.' || ch == '_' || ch == '-')
                    || !c.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
            })
        {
            return Err(bad("invalid repository name"));
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag,
        };
        Ok(Self { registry, repository, tag, digest })
    }

    /// `registry/repository`.
    pub fn repository_path(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The name shown to people: `nginx`, `whatwant/node-web`, `127.0.0.1:5000/app`.
    pub fn familiar_repository(&self) -> String {
        if self.registry == DEFAULT_REGISTRY {
            self.repository.strip_prefix("library/").unwrap_or(&self.repository).to_string()
        } else {
            self.repository_path()
        }
    }
}

impl std::fmt::Display for ImageName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Normalizes a reference to its fully qualified form (`nginx` -> `docker.io/library/nginx:latest`).
pub fn normalize(reference: &str) -> Result<String> {
    Ok(ImageName::parse(reference)?.to_string())
}

/// One name (or none) of one stored image.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ImageRef {
    /// Fully qualified name, `None` for an image imported without a name.
    pub name: Option<String>,
    /// Manifest digest, `sha256:<hex>`.
    pub digest: String,
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{n}@{}", self.digest),
            None => write!(f, "{}", self.digest),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve_like_docker() {
        assert_eq!(normalize("nginx").unwrap(), "docker.io/library/nginx:latest");
        assert_eq!(normalize("busybox:1.25").unwrap(), "docker.io/library/busybox:1.25");
        assert_eq!(normalize("whatwant/node-web:1.0").unwrap(), "docker.io/whatwant/node-web:1.0");
        assert_eq!(normalize("kodekloud/throw-dice").unwrap(), "docker.io/kodekloud/throw-dice:latest");
        assert_eq!(normalize("index.docker.io/library/nginx").unwrap(), "docker.io/library/nginx:latest");
        assert_eq!(normalize("127.0.0.1:5000/app").unwrap(), "127.0.0.1:5000/app:latest");
        assert_eq!(normalize("localhost/app:v1").unwrap(), "localhost/app:v1");
        assert_eq!(normalize("ghcr.io/a/b/c:1").unwrap(), "ghcr.io/a/b/c:1");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(normalize(&format!("nginx@{d}")).unwrap(), format!("docker.io/library/nginx@{d}"));
        assert_eq!(normalize(&format!("nginx:1@{d}")).unwrap(), format!("docker.io/library/nginx:1@{d}"));
    }

    #[test]
    fn bad_names_are_refused() {
        for r in ["", "Nginx", "nginx:", "nginx:-x", "a//b", "nginx@sha256:zz", "/nginx"] {
            assert!(normalize(r).is_err(), "{r:?} accepted");
        }
    }

    #[test]
    fn familiar_names() {
        assert_eq!(ImageName::parse("nginx").unwrap().familiar_repository(), "nginx");
        assert_eq!(ImageName::parse("whatwant/node-web:1.0").unwrap().familiar_repository(), "whatwant/node-web");
        assert_eq!(ImageName::parse("127.0.0.1:5000/x").unwrap().familiar_repository(), "127.0.0.1:5000/x");
    }
}
